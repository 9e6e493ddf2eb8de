"""Memory plan: bytes of weights and KV cache per GPU for a config, MP, dtype, batch and sequence length."""

from __future__ import annotations

from dataclasses import dataclass

from llamakit.checkpoint.layout import expected_shapes
from llamakit.checkpoint.params import ModelConfig

GiB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
# CUDA context, allocator slack, activations and logits of one step: measured about 1 GiB on an H100
# for 7B at batch 64; rounded up so the plan errs on the safe side.
OVERHEAD_BYTES = int(1.5 * GiB)


@dataclass(frozen=True)
class MemoryPlan:
    """What one GPU (one model-parallel rank) holds."""

    mp: int
    dtype: str
    batch: int
    seq: int
    weights: int  # bytes per rank
    kv_cache: int  # bytes per rank
    overhead: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.overhead

    def fits(self, gpu_bytes: int) -> bool:
        return self.total <= gpu_bytes


def weight_bytes_per_rank(config: ModelConfig, vocab_size: int, mp: int, dtype: str) -> int:
    """Exact bytes of one rank's weights; int8 keeps embeddings and norms in 16 bit and adds fp scales per row."""
    total = 0
    for key, shape in expected_shapes(config, vocab_size, mp).items():
        n = 1
        for s in shape:
            n *= s
        if dtype == "int8" and len(shape) == 2 and key != "tok_embeddings.weight":
            total += n + shape[0] * 2  # int8 weights + one bf16 scale per output row
        elif dtype == "int8":
            total += n * 2
        else:
            total += n * DTYPE_BYTES[dtype]
    return total


def kv_cache_bytes(config: ModelConfig, mp: int, batch: int, seq: int, dtype: str) -> int:
    """Keys and values for `batch` sequences of `seq` tokens, this rank's share of the kv heads."""
    elt = 2 if dtype in ("int8", "bf16", "fp16") else 4
    local_kv = max(1, config.kv_heads // mp)
    return 2 * config.n_layers * batch * seq * local_kv * config.head_dim * elt


def plan_memory(config: ModelConfig, vocab_size: int, mp: int, dtype: str, batch: int, seq: int) -> MemoryPlan:
    """The per-GPU memory plan for running this model at this MP, dtype, batch and sequence length."""
    return MemoryPlan(mp=mp, dtype=dtype, batch=batch, seq=seq,
                      weights=weight_bytes_per_rank(config, vocab_size, mp, dtype),
                      kv_cache=kv_cache_bytes(config, mp, batch, seq, dtype),
                      overhead=OVERHEAD_BYTES)


def max_batch_that_fits(config: ModelConfig, vocab_size: int, mp: int, dtype: str, seq: int, gpu_bytes: int,
                        cap: int = 512) -> int:
    """Largest batch whose plan fits `gpu_bytes` (0 if not even the weights fit)."""
    base = plan_memory(config, vocab_size, mp, dtype, 0, seq)
    free = gpu_bytes - base.total
    per_seq = kv_cache_bytes(config, mp, 1, seq, dtype)
    if free <= 0 or per_seq <= 0:
        return 0
    return min(cap, free // per_seq)


def fmt_gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"
