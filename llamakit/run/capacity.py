"""What each GPU of a run will hold, in the plan's words: weights + reserve, then the paged KV cache in tokens and
sequences, by the engine's own arithmetic (llamakit.memory.kv_capacity); the warning, with llamakit.fit's fix, when
not even one sequence of max_seq_len fits."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamakit.fit import reshard_command, reshard_destination, verdict
from llamakit.memory import fmt_gib, kv_dtype, plan_capacity, plan_memory, weight_bytes_per_rank, weight_dtype

if TYPE_CHECKING:
    from llamakit.run.plan import Devices
    from llamakit.run.prompts import Prepared


def memory_line(config: Any, vocab: int, dev: Devices, quantize: str, batch: int, seq: int,
                ckpt_dir: str | Path = "CKPT_DIR", typical: int | None = None, fast: bool = True,
                utilization: float = 1.0, kv_cache_dtype: str = "auto") -> tuple[str, str | None]:
    """What each GPU will hold, as the engine sizes it (memory.plan_capacity = engine.kv_cache_blocks' arithmetic):
    weights + reserve, then the paged KV cache of what is left, in tokens and in sequences of about `typical` tokens
    (max_batch_size is only an upper limit); and a warning with llamakit.fit's fix only when the weights do not fit
    or not even one sequence of max_seq_len does. `utilization` (gpu_memory_utilization) scales each GPU;
    `kv_cache_dtype` fp8 halves a token's bytes."""
    dtype = weight_dtype(dev.dtype, quantize)
    if not dev.gpus:  # the CPU engine gives every sequence max_seq_len: the fixed plan is what it holds
        return f"{plan_memory(config, vocab, dev.mp, dtype, batch, seq).breakdown()} per process", None
    total = min(g.cuda_total_bytes for g in dev.gpus)  # what the engine's torch.cuda.mem_get_info reports
    small = int(total * utilization) if utilization < 1 else total
    cap = plan_capacity(config, vocab, dev.mp, dtype, seq, batch, small, graphs=fast,
                        kv_dtype=kv_dtype(dev.dtype, kv_cache_dtype))
    weights = weight_bytes_per_rank(config, vocab, dev.mp, dtype)
    of = (f"{fmt_gib(small)} per GPU (gpu_memory_utilization {utilization:g} of {fmt_gib(total)})"
          if utilization < 1 else f"{fmt_gib(small)} per GPU")
    text = (f"weights {fmt_gib(weights)} + reserve {fmt_gib(small - weights - cap.budget)} (CUDA context, "
            f"activations{', decode graphs' if fast else ''}) of {of}; {cap.words(typical)}")
    if cap.fits_one:
        return text, None
    v = verdict(config, vocab, dev.mp, dtype, 1, seq, small, max(dev.mp, len(dev.gpus)))
    if v.fix_plan is None or not (v.mp_to or v.int8):
        advice = "lower max_seq_len, or use more GPUs (llamakit reshard to a higher MP)"
    else:
        parts = []
        if v.mp_to:
            parts.append(f"reshard to MP={v.mp_to}: `{reshard_command(ckpt_dir, v.mp_to)}` and set ckpt_dir "
                         f"to {reshard_destination(ckpt_dir, v.mp_to)}")
        if v.int8:
            parts.append("set quantize: int8 (int8 weights take half the memory)")
        advice = " and ".join(parts)
    if utilization < 1:
        advice += " (or raise gpu_memory_utilization)"
    what = (f"the weights ({fmt_gib(weights)}) and the reserve leave no room for a KV cache" if cap.budget <= 0 else
            f"the KV cache left ({cap.tokens:,} tokens) holds less than one sequence of max_seq_len {seq}")
    return text, f"{what} in GPU memory ({of}): {advice}"


def typical_length(todo: list[Prepared], seq: int, max_gen_len: int) -> int | None:
    """The median sequence the run will hold: prompt tokens + its max_gen_len, at most max_seq_len (None: no
    prompts to generate)."""
    lengths = sorted(min(seq, len(t.tokens) + int(t.settings.get("max_gen_len", max_gen_len)))
                     for t in todo if not t.skipped)
    return lengths[len(lengths) // 2] if lengths else None
