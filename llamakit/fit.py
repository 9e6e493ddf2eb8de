"""Does a run fit these GPUs, and what should the user change when it does not: the one verdict (dtype auto, max
batch, the fix to propose, the one reshard destination) that doctor, run, inspect and new-recipe put into words.

The bytes come from llamakit.memory's plan; this module only decides. Pure functions, no torch, no NVML.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from llamakit import defaults
from llamakit.checkpoint.params import ModelConfig
from llamakit.memory import (FP8_ADVICE, GiB, MemoryPlan, fp8_advice, kv_dtype, kv_tokens_that_fit,
                             max_batch_that_fits, plan_memory, sequences_that_fit, weight_dtype)

__all__ = ["resolve_dtype", "weight_dtype", "kv_dtype", "FP8_ADVICE", "fp8_advice", "reshard_destination",
           "reshard_command", "mp_within", "Verdict", "verdict", "FitOption", "fit_options", "CARD_SIZES_GB",
           "capacity_words"]

DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "half": "fp16", "float32": "fp32", "float": "fp32"}
# Card sizes as sold ("48 GB"); NVML reports a bit less (an RTX A6000: 47.99 GiB), hence USABLE.
CARD_SIZES_GB = (16, 24, 40, 48, 80, 141)
USABLE = 0.99
GPU_COUNTS = (1, 2, 4, 8)


def resolve_dtype(dtype: str, device: str, ccs: Sequence[Optional[tuple[int, int]]]) -> str:
    """The compute dtype `auto` stands for: bf16 when every GPU used has compute capability >= 8.0 (bf16 tensor
    cores), fp16 below, fp32 on the CPU; with no GPU known (inspect on a laptop) the default, bf16."""
    name = DTYPE_ALIASES.get(dtype.lower().replace("torch.", ""), dtype.lower())
    if name != "auto":
        return name
    if device == "cpu":
        return "fp32"
    if not ccs:
        return defaults.DTYPE
    return "bf16" if all(cc is not None and cc >= (8, 0) for cc in ccs) else "fp16"


def reshard_destination(src: str | Path, mp: int) -> str:
    """Where a resharded copy goes: beside the original, named after its MP (/data/LLaMA/65B -> /data/LLaMA/65B-mp2)."""
    return f"{str(src).rstrip('/')}-mp{mp}"


def reshard_command(src: str | Path, mp: int) -> str:
    """The exact command that writes that copy."""
    src = str(src).rstrip("/")
    return f"llamakit reshard {src} {reshard_destination(src, mp)} --mp {mp}"


def mp_within(mp: int, n_gpus: int) -> int:
    """Without the model's shape (nothing to size by): the largest divisor of `mp` the GPUs can run, the most
    memory per GPU that is possible there."""
    return max(d for d in range(1, max(1, n_gpus) + 1) if mp % d == 0)


@dataclass(frozen=True)
class Verdict:
    """Whether a run of this shape fits GPUs of `gpu_bytes`, and the smallest change that makes it fit."""

    plan: MemoryPlan  # at the checkpoint's MP and the asked dtype, batch and seq
    gpu_bytes: int  # what each rank may use (the smallest GPU)
    n_gpus: int
    fits: bool
    max_batch: int  # largest batch at this MP, dtype and seq on gpu_bytes (0: weights too big, or MP > GPUs)
    # the change (None/False: keep it); fix_plan is the plan after it, None when nothing on these GPUs fits
    mp_to: Optional[int] = None  # reshard to this MP (reshard_command)
    int8: bool = False  # set quantize: int8
    fix_plan: Optional[MemoryPlan] = None
    kv_tokens: int = 0  # tokens the paged KV cache holds at this MP and dtype, shared by the running sequences

    @property
    def has_fix(self) -> bool:
        return not self.fits and self.fix_plan is not None


def verdict(config: ModelConfig, vocab: int, mp: int, dtype: str, batch: int, seq: int, gpu_bytes: int,
            n_gpus: int, cap: int = 512, kv_dtype: str | None = None) -> Verdict:
    """Fit of (MP, dtype, max_seq_len) on `n_gpus` GPUs of `gpu_bytes`, the paged KV cache's way: it fits when the
    weights, the reserve and one sequence of max_seq_len do (memory.kv_capacity); max_batch_size is an upper
    limit, never the thing to change. When it does not fit, the smallest change: no reshard before a reshard (100+
    GB to convert), no int8 before int8 (slightly different text), fewer shards before more (more data-parallel
    copies). `max_batch`: sequences of max_seq_len that fit at once (at most `cap`); `plan` and `fix_plan` are the
    fixed plans of min(batch, that many) sequences, for the bytes they list. `kv_dtype` (memory.kv_dtype): the
    cache's, for kv_tokens."""
    plan = plan_memory(config, vocab, mp, dtype, batch, seq)
    runs_here = mp <= n_gpus
    max_batch = max_batch_that_fits(config, vocab, mp, dtype, seq, gpu_bytes, cap) if runs_here else 0
    kv = (kv_tokens_that_fit(config, vocab, mp, dtype, seq, gpu_bytes, kv_dtype=kv_dtype)  # as max_batch: no graphs
          if runs_here else 0)
    if runs_here and max_batch >= 1:
        return Verdict(plan, gpu_bytes, n_gpus, True, max_batch, kv_tokens=kv)
    dtypes = [dtype] if dtype == "int8" else [dtype, "int8"]
    mps = [m for m in config.allowed_mp(vocab) if m <= n_gpus]
    candidates = sorted(((m != mp, dt != dtype, m), m, dt) for m in mps for dt in dtypes)
    for _, m, dt in candidates:
        best = max_batch if (m, dt) == (mp, dtype) else max_batch_that_fits(config, vocab, m, dt, seq, gpu_bytes, cap)
        if best >= 1:
            return Verdict(plan, gpu_bytes, n_gpus, False, max_batch, mp_to=m if m != mp else None,
                           int8=dt != dtype, fix_plan=plan_memory(config, vocab, m, dt, min(batch, best), seq),
                           kv_tokens=kv)
    return Verdict(plan, gpu_bytes, n_gpus, False, max_batch, kv_tokens=kv)


def capacity_words(kv_tokens: int, seq: int, typical: int | None = None) -> str:
    """What the paged KV cache holds, in tokens and sequences: max_batch_size is only an upper limit, sequences run
    as their blocks fit, each in whole blocks ('holds 252,000 tokens: 246 sequences of max_seq_len 1024, about 630 of
    ~400 tokens')."""
    typical = max(1, min(seq, typical or seq // 2))
    return (f"the KV cache holds {kv_tokens:,} tokens: {sequences_that_fit(kv_tokens, seq)} sequences of max_seq_len "
            f"{seq}, about {sequences_that_fit(kv_tokens, typical)} of ~{typical} tokens (max_batch_size is an upper "
            "limit; sequences run as their cache blocks fit)")


@dataclass
class FitOption:
    """`gpus` cards of `gpu_gb` GB each hold the model at `dtype` (per_gpu_bytes each)."""

    dtype: str
    gpus: int
    gpu_gb: int
    per_gpu_bytes: int


def card_bytes(gb: int) -> int:
    """What NVML reports for a card sold as `gb` GB, a little less."""
    return int(gb * GiB * USABLE)


def fit_options(config: ModelConfig, vocab: int, dtype: str, batch: int, seq: int) -> list[FitOption]:
    """For 1, 2, 4, 8 GPUs (where MP divides the shape): the smallest card that holds one rank; only
    options that need smaller cards than all options with fewer GPUs are kept."""
    out: list[FitOption] = []
    allowed = config.allowed_mp(vocab)
    for n in GPU_COUNTS:
        if n not in allowed:
            continue
        total = plan_memory(config, vocab, n, dtype, batch, seq).total
        size = next((gb for gb in CARD_SIZES_GB if total <= card_bytes(gb)), None)
        if size is not None and all(size < o.gpu_gb for o in out):
            out.append(FitOption(dtype, n, size, total))
    return out
