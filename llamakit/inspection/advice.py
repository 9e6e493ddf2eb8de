"""The memory part of `llamakit inspect`: llamakit.fit's verdict for this machine, and which cards would hold the
model, in inspect's words."""

from __future__ import annotations

from llamakit.checkpoint.params import ModelConfig
from llamakit.fit import (CARD_SIZES_GB, FitOption, Verdict, capacity_words, card_bytes, fit_options,
                          reshard_command, verdict)
from llamakit.gpus import GpuInfo
from llamakit.inspection.report import MemoryInfo
from llamakit.memory import fmt_gib, plan_memory


def fit_summary(options: list[FitOption], dtype: str, mp: int | None = None) -> str:
    """'needs 1x 40 GB or 2x 24 GB at bf16' (or that no listed card count and size is enough); with the
    checkpoint's `mp`, a GPU count other than it says that it holds after a reshard to that MP."""
    opts = [o for o in options if o.dtype == dtype]
    if not opts:
        return f"at {dtype} it does not fit on 8 GPUs of {CARD_SIZES_GB[-1]} GB"

    def reshard(o: FitOption) -> str:
        return f" after a reshard to MP={o.gpus}" if mp is not None and o.gpus != mp else ""

    first = opts[0]
    if first.gpus == 1 and first.per_gpu_bytes <= card_bytes(CARD_SIZES_GB[0]) // 2:
        # far below the smallest listed card: naming "16 GB" would mislead (the demo model needs 1.5 GiB)
        return f"needs 1 GPU with {fmt_gib(first.per_gpu_bytes)} free at {dtype}{reshard(first)}"
    return "needs " + " or ".join(f"{o.gpus}x {o.gpu_gb} GB{reshard(o)}" for o in opts) + f" at {dtype}"


def memory_info(config: ModelConfig, vocab: int, mp: int, dtype: str, batch: int, seq: int,
                gpus: list[GpuInfo], ckpt: str) -> MemoryInfo:
    """The plan at the checkpoint's MP and llamakit.fit's verdict for this machine, in inspect's words."""
    plan = plan_memory(config, vocab, mp, dtype, batch, seq)
    options = fit_options(config, vocab, dtype, batch, seq)
    advice: list[str] = []
    fits_here: bool | None = None
    max_batch: int | None = None
    if not gpus:
        advice.append("no NVIDIA GPU detected on this machine (NVML), so no verdict for here")
    else:
        n, smallest = len(gpus), min(g.cuda_total_bytes for g in gpus)
        card = f"{gpus[0].name} ({fmt_gib(smallest)})"
        v = verdict(config, vocab, mp, dtype, batch, seq, smallest, n)
        fits_here = v.fits
        max_batch = v.max_batch if mp <= n else None
        if fits_here:
            line = (f"fits: weights {fmt_gib(plan.weights)} + reserve {fmt_gib(plan.overhead)} per GPU at MP {mp} on "
                    f"{card}, the rest is KV cache; ")
            copies = n // mp
            if copies > 1:
                line += (f"{copies} data-parallel copies use {copies * mp} GPUs "
                         f"(torchrun --nproc_per_node {copies * mp}; Meta's own scripts: {mp})")
            else:
                line += f"run with torchrun --nproc_per_node {mp}"
            advice.append(line + f"; {capacity_words(v.kv_tokens, seq)}")
        else:
            if mp > n:
                advice.append(f"this checkpoint has MP {mp}, so it needs {mp} GPUs; this machine has {n}")
            else:
                one = plan_memory(config, vocab, mp, dtype, 1, seq).total
                advice.append(f"MP {mp} at {dtype} needs {fmt_gib(one)} per GPU for its weights, reserve and one "
                              f"sequence of {seq} tokens; {card} is too small")
            advice.extend(_fix_words(v, config, vocab, dtype, batch, seq, ckpt))
    if dtype != "int8":  # int8 options only where they beat every option at the chosen dtype
        options += [o for o in fit_options(config, vocab, "int8", batch, seq)
                    if not any(c.gpus <= o.gpus and c.gpu_gb <= o.gpu_gb for c in options)]
    return MemoryInfo(dtype, batch, seq, mp, plan.weights, plan.kv_cache, plan.overhead, plan.total, list(gpus),
                      fits_here, max_batch, options, advice)


def _fix_words(v: Verdict, config: ModelConfig, vocab: int, dtype: str, batch: int, seq: int, ckpt: str) -> list[str]:
    """The verdict's reshard and int8 changes (a lower batch alone is worded by the caller)."""
    if v.fix_plan is None:
        return [f"no MP fits {v.n_gpus} GPU(s) of {fmt_gib(v.gpu_bytes)}, not even at int8; "
                f"{fit_summary(fit_options(config, vocab, dtype, batch, seq), dtype)}"]
    out = []
    if v.mp_to:
        out.append(f"reshard to MP {v.mp_to}: `{reshard_command(ckpt, v.mp_to)}` "
                   f"({fmt_gib(v.fix_plan.total)} per GPU at {v.fix_plan.dtype})")
    if v.int8:
        out.append(f"it does not fit these GPUs at {dtype} but does at int8: set `quantize: int8` in the recipe")
    return out
