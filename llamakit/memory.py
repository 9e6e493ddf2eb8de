"""Memory plan: bytes of weights, KV cache and overhead (measured) per GPU for a config, MP, dtype, batch and seq."""

from __future__ import annotations

from dataclasses import dataclass

from llamakit.checkpoint.layout import expected_shapes
from llamakit.checkpoint.params import ModelConfig

GiB = 1024**3
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2, "int8": 1}
# Beyond weights and KV cache, a GPU process holds its CUDA context and what the caching allocator keeps for the
# activations of a prefill step (the engine prefills up to PREFILL_TOKENS tokens at once). Calibrated with
# `tools/memory_check.py` on an H200 (torch 2.11+cu130, 2026-11-24; docs/BENCHMARKS.md): context 0.74 GiB; the
# allocator's reserve above weights + KV cache was 2.0-2.2x the FFN-time activations of one full prefill step in
# bf16 (7B, 13B, 30B widths), and in int8 up to 5.5x the dequantized w1/w3 weight more (65B width). The factors
# below cover every measured case with room to spare.
CUDA_CONTEXT_BYTES = int(0.75 * GiB)
# With MP > 1 each GPU also holds NCCL's buffers (by NCCL's defaults a few MiB per channel and peer; more channels
# over NVLink). An allowance, not a measurement: no two-GPU process total was measured yet.
NCCL_BYTES = int(0.5 * GiB)
PREFILL_TOKENS = 8192  # per prefill step on CUDA (at least max_seq_len); llamakit.engine.engine uses it
ACTIVATION_FACTOR = 2.5
INT8_DEQUANT_FACTOR = 6


def overhead_bytes(config: ModelConfig, mp: int, dtype: str, seq: int) -> int:
    """CUDA context (+ NCCL buffers at MP > 1) + allocator reserve for one prefill step's activations (+ int8's
    dequantized weights)."""
    ffn_local = config.ffn_hidden // mp
    elt = 4 if dtype == "fp32" else 2
    tokens = max(PREFILL_TOKENS, seq)
    activations = tokens * elt * (2 * config.dim + 3 * ffn_local)  # residual + normed input, w1/w3 out, SwiGLU out
    dequant = INT8_DEQUANT_FACTOR * 2 * ffn_local * config.dim * 2 if dtype == "int8" else 0  # w1/w3 in bf16
    return CUDA_CONTEXT_BYTES + (NCCL_BYTES if mp > 1 else 0) + int(ACTIVATION_FACTOR * activations) + dequant


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

    def breakdown(self) -> str:
        """'weights 12.1 GiB + KV cache 6.2 GiB + overhead 2.4 GiB = 20.8 GiB', for plans and recipes."""
        return (f"weights {fmt_gib(self.weights)} + KV cache {fmt_gib(self.kv_cache)} + overhead "
                f"{fmt_gib(self.overhead)} = {fmt_gib(self.total)}")


def weight_dtype(dtype: str, quantize: str) -> str:
    """The dtype the plan counts weights in: int8 when the recipe quantizes, else the compute dtype."""
    return "int8" if quantize == "int8" else dtype


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
                      overhead=overhead_bytes(config, mp, dtype, seq))


def max_batch_that_fits(config: ModelConfig, vocab_size: int, mp: int, dtype: str, seq: int, gpu_bytes: int,
                        cap: int = 512) -> int:
    """Largest batch whose plan fits `gpu_bytes` (0 if not even the weights fit)."""
    base = plan_memory(config, vocab_size, mp, dtype, 0, seq)
    free = gpu_bytes - base.total
    per_seq = kv_cache_bytes(config, mp, 1, seq, dtype)
    if free <= 0 or per_seq <= 0:
        return 0
    return min(cap, free // per_seq)


def kv_tokens_that_fit(config: ModelConfig, vocab_size: int, mp: int, dtype: str, seq: int, gpu_bytes: int) -> int:
    """Tokens of KV cache (all sequences together) that fit `gpu_bytes` next to the weights and overhead: what the
    paged cache holds, shared by however many sequences are running."""
    free = gpu_bytes - plan_memory(config, vocab_size, mp, dtype, 0, seq).total
    per_token = kv_cache_bytes(config, mp, 1, 1, dtype)
    return max(0, free // per_token) if per_token > 0 else 0


def fmt_gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"
