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
    return fit_module().verdict(c.config, c.vocab_size, c.mp, _dtype(f), r.max_batch_size, r.max_seq_len, gpu_bytes,
                          n_gpus)


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
    if v.batch_to:
        parts.append(f"set max_batch_size: {v.batch_to}")
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
    c, r = f.ckpt, f.recipe
    if c is None or c.error or r is None:
        return CheckResult("memory-fit", SKIP, "no checkpoint given" if c is None else "checkpoint not readable (see checkpoint)")
    if not f.gpus or r.device == "cpu":
        return CheckResult("memory-fit", SKIP, "runs on the CPU: no GPU memory to fit (see ram)")
    dtype = _dtype(f)
    mp = c.mp
    small = min(f.gpus, key=lambda g: g.total_bytes)
    busy = min(f.gpus, key=lambda g: g.free_bytes)
    n = max(len(f.gpus), mp)  # whether there are GPUs enough for the shards is mp-plan's finding, not this one's
    empty = _verdict(f, small.total_bytes, n)
    now = _verdict(f, busy.free_bytes, n)  # the batch to suggest fits what is free now
    plan, best, best_empty = empty.plan, now.max_batch, empty.max_batch
    parts = (f"weights {gib(plan.weights)} + KV cache {gib(plan.kv_cache)} (batch {r.max_batch_size} x "
             f"{r.max_seq_len} tokens) + {gib(plan.overhead)} overhead")
    head = f"{dtype} at MP={mp} needs {gib(plan.total)} per GPU = {parts}"
    if plan.total > small.total_bytes:
        if best > 0:
            fix = f"set max_batch_size: {best} (or a shorter max_seq_len)"
        elif best_empty > 0:
            fix = (f"set max_batch_size: {best_empty} once the GPUs are free (other processes hold memory now: "
                   "see `nvidia-smi`)")
        elif empty.fix_plan is not None:
            fix = _fix_words(empty, c.path)
        else:
            fix = ("even with `quantize: int8` it does not fit: reshard to more GPUs (llamakit reshard SRC DST --mp N) "
                   "on a machine that has them")
        return CheckResult("memory-fit", FAIL, f"{head}, but GPU{small.index} has {gib(small.total_bytes)}", fix)
    if plan.total > busy.free_bytes:
        return CheckResult("memory-fit", WARN, f"{head}: fits GPU{busy.index}'s {gib(busy.total_bytes)} but only "
                           f"{gib(busy.free_bytes)} is free now", "another process uses the GPU: see `nvidia-smi`")
    return CheckResult("memory-fit", OK, f"{head}; fits {gib(small.total_bytes)} (max batch at this length: {best})")
