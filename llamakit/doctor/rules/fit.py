"""Checkpoint rules: can the checkpoint be read, how run would start it (MP x DP), and does it fit the GPUs
(llamakit.fit's verdict in doctor's words)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from llamakit.doctor.facts import Facts
from llamakit.doctor.rules.common import FAIL, OK, SKIP, WARN, CheckResult, fit_module, gib, tables
from llamakit.doctor.rules.software import gpu_cc

if TYPE_CHECKING:
    from llamakit.fit import Verdict

__all__ = ["rule_checkpoint", "rule_mp_plan", "rule_memory_fit"]


def rule_checkpoint(f: Facts) -> CheckResult:
    if f.recipe and f.recipe.error:
        return CheckResult("checkpoint", FAIL, f"recipe: {f.recipe.error}", f.recipe.fix)
    c = f.ckpt
    if c is None:
        return CheckResult("checkpoint", SKIP, "no checkpoint given (--ckpt-dir DIR or --recipe FILE)")
    if c.error:
        return CheckResult("checkpoint", FAIL, f"{c.path}: {c.error}", c.fix)
    cfg = c.config
    try:
        from llamakit.checkpoint.params import identify
        kind = f"{identify(cfg)}: "
    except Exception:  # noqa: BLE001 - a label is nice to have, never worth a failure
        kind = ""
    return CheckResult("checkpoint", OK, f"{c.path}: {kind}dim {cfg.dim}, {cfg.n_layers} layers, vocab {c.vocab_size}, "
                       f"MP={c.mp} ({c.mp} shard(s), {gib(c.total_bytes)})")


def _dtype(f: Facts, t: dict[str, Any] | None = None) -> str:
    """The weight dtype run will use (llamakit.fit decides `auto`; the recipe's quantize: int8 counts int8)."""
    r = f.recipe
    quantize = "int8" if r and r.quantize and "int8" in r.quantize else "none"
    ccs = [gpu_cc(g, t or tables()) for g in f.gpus]
    fit = fit_module()
    return fit.weight_dtype(fit.resolve_dtype(r.dtype if r else "auto", "cuda", ccs), quantize)


def _verdict(f: Facts, gpu_bytes: int, n_gpus: int) -> Verdict:
    """llamakit.fit's verdict for the checkpoint and recipe on `n_gpus` GPUs of `gpu_bytes`."""
    c, r = f.ckpt, f.recipe
    assert c is not None and r is not None
    fit, dtype = fit_module(), _dtype(f)
    return fit.verdict(c.config, c.vocab_size, c.mp, dtype, r.max_batch_size, r.max_seq_len, gpu_bytes, n_gpus,
                       kv_dtype=fit.kv_dtype(dtype, r.kv_cache_dtype))


def _fix_words(v: Verdict, src: str) -> str:
    """A reshard / int8 / batch change of the verdict as the fix line ('' when nothing on these GPUs fits)."""
    assert v.fix_plan is not None
    parts = []
    if v.mp_to:
        fit = fit_module()
        parts.append(f"{fit.reshard_command(src, v.mp_to)}, then use {fit.reshard_destination(src, v.mp_to)} as "
                     "ckpt_dir")
    if v.int8:
        parts.append(f"set `quantize: int8` in the recipe (needs {gib(v.fix_plan.total)} per GPU)")
    return " and ".join(parts)


def rule_mp_plan(f: Facts) -> CheckResult:
    c, r = f.ckpt, f.recipe
    if c is None or c.error or r is None:
        return CheckResult("mp-plan", SKIP, "no checkpoint given" if c is None else "checkpoint not readable (see checkpoint)")
    n, mp = len(f.gpus), c.mp
    if r.device == "cpu" or (r.device == "auto" and n == 0):
        return CheckResult("mp-plan", WARN, f"device cpu: run starts {mp} process(es) on the CPU with gloo (slow)",
                           "use a GPU server for real work")
    if n == 0:
        return CheckResult("mp-plan", FAIL, f"MP={mp} checkpoint but no usable GPU here",
                           "run on the GPU server (see torch-build / driver), or set `device: cpu` in the recipe "
                           "(very slow)")
    if isinstance(r.nproc, int) or str(r.nproc).isdigit():
        k = int(r.nproc)
        if k % mp or k > n:
            return CheckResult("mp-plan", FAIL, f"nproc {k} does not fit MP={mp} on {n} GPU(s)",
                               f"set nproc to a multiple of {mp} up to {n - n % mp or mp}, or `nproc: auto`")
        return CheckResult("mp-plan", OK, f"MP={mp} on {n} GPU(s): run starts {k} processes (MP {mp} x DP {k // mp})")
    if n >= mp:
        dp = n // mp
        idle = f"; GPU(s) beyond {mp * dp} stay idle" if n % mp else ""
        return CheckResult("mp-plan", OK, f"MP={mp} checkpoint on {n} GPU(s): run starts {mp * dp} processes "
                           f"(MP {mp} x DP {dp}){idle}")
    finding = f"MP={mp} checkpoint but only {n} usable GPU(s): it needs one GPU per shard"
    if f.gpus_total >= mp and f.cuda_visible_devices is not None:
        return CheckResult("mp-plan", FAIL, finding, f"unset CUDA_VISIBLE_DEVICES={f.cuda_visible_devices!r}: it hides "
                           f"{f.gpus_total - n} of {f.gpus_total} GPUs")
    smallest = min(g.total_bytes for g in f.gpus)
    v = _verdict(f, smallest, n)
    if v.fix_plan is not None:
        fix = _fix_words(v, c.path)
    else:
        need8 = v.plan.total if v.plan.dtype == "int8" else 0
        fix = (f"even with `quantize: int8` it does not fit {n} GPU(s) of {gib(smallest)}"
               + (f" ({gib(need8)} per GPU)" if need8 else "") + f": use a machine with {mp} GPUs")
    return CheckResult("mp-plan", FAIL, finding, fix)


def rule_memory_fit(f: Facts) -> CheckResult:
    """The paged KV cache's fit: the weights, the reserve and one sequence of max_seq_len must fit each GPU's
    share (gpu_memory_utilization); max_batch_size is an upper limit, so the finding says how many sequences the
    cache holds rather than asking for a smaller batch."""
    c, r = f.ckpt, f.recipe
    if c is None or c.error or r is None:
        return CheckResult("memory-fit", SKIP, "no checkpoint given" if c is None else "checkpoint not readable (see checkpoint)")
    if not f.gpus or r.device == "cpu":
        return CheckResult("memory-fit", SKIP, "runs on the CPU: no GPU memory to fit (see ram)")
    dtype = _dtype(f)
    mp, util = c.mp, r.gpu_memory_utilization
    small = min(f.gpus, key=lambda g: g.cuda_total_bytes)
    busy = min(f.gpus, key=lambda g: g.free_bytes)
    share = int(small.cuda_total_bytes * util)
    n = max(len(f.gpus), mp)  # whether there are GPUs enough for the shards is mp-plan's finding, not this one's
    empty = _verdict(f, share, n)
    plan = empty.plan
    of = f"{gib(share)} (gpu_memory_utilization {util:g})" if util < 1 else gib(share)
    head = (f"{dtype} at MP={mp}: weights {gib(plan.weights)} + reserve {gib(plan.overhead)} per GPU, then the "
            f"KV cache")
    if not empty.fits:
        if empty.fix_plan is not None:
            fix = _fix_words(empty, c.path)
        else:
            fix = ("even with `quantize: int8` it does not fit: reshard to more GPUs (llamakit reshard SRC DST --mp N) "
                   "on a machine that has them")
        if util < 1:
            fix += ", or raise gpu_memory_utilization"
        return CheckResult("memory-fit", FAIL, f"{head}: not even one sequence of max_seq_len {r.max_seq_len} fits "
                           f"GPU{small.index}'s {of}", fix + " (or a shorter max_seq_len)")
    if not _verdict(f, min(share, busy.free_bytes), n).fits:
        return CheckResult("memory-fit", WARN, f"{head}: fits GPU{busy.index}'s {of} but only "
                           f"{gib(busy.free_bytes)} is free now", "another process uses the GPU: see `nvidia-smi`")
    fit = fit_module()
    words = fit.capacity_words(empty.kv_tokens, r.max_seq_len)
    advice = fit.fp8_advice(empty.kv_tokens, r.max_batch_size, r.max_seq_len, fit.kv_dtype(dtype, r.kv_cache_dtype))
    if advice:
        words += f"; {advice}"
    return CheckResult("memory-fit", OK, f"{head}: fits {of}; {words}")
