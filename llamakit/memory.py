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


# what the plan and doctor add when max_batch_size sequences do not fit the cache at once and it is not fp8 yet
# (fp8_advice decides when)
FP8_ADVICE = "kv_cache_dtype: fp8 would hold about twice as many"


def fp8_advice(kv_tokens: int, rows: int, seq: int, kv_dtype: str) -> str:
    """FP8_ADVICE when `rows` (max_batch_size) sequences of `seq` tokens do not all fit the cache's `kv_tokens` at
    once (in whole blocks) and the cache (`kv_dtype`, kv_dtype's name) is not fp8 yet; '' otherwise. The one home of
    that decision: KvCapacity.words (the run plan) and doctor's memory-fit rule ask it."""
    return FP8_ADVICE if kv_dtype != "fp8" and sequences_that_fit(kv_tokens, seq) < rows else ""


def kv_dtype(dtype: str, kv_cache_dtype: str = "auto") -> str:
    """The KV cache's dtype name for kv_cache_bytes: the compute dtype, or fp8 (kv_cache_dtype fp8 / fp8_e4m3).
    The one home of "auto keeps the model's dtype, anything else is fp8": model/kv_cache.py:cache_dtype asks it."""
    return dtype if kv_cache_dtype == "auto" else "fp8"


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
    """Keys and values for `batch` sequences of `seq` tokens, this rank's share of the kv heads; `dtype` the cache's
    (kv_dtype): fp8, or the weights' (int8 weights keep a 16-bit cache)."""
    elt = {"fp8": 1, "fp32": 4}.get(dtype, 2)
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
    """Largest batch whose plan (every sequence at max_seq_len, in whole KV-cache blocks) fits `gpu_bytes` (0 if not
    even the weights fit)."""
    base = plan_memory(config, vocab_size, mp, dtype, 0, seq)
    free = gpu_bytes - base.total
    per_seq = kv_cache_bytes(config, mp, 1, -(-seq // BLOCK_SIZE) * BLOCK_SIZE, dtype)
    if free <= 0 or per_seq <= 0:
        return 0
    return min(cap, free // per_seq)


def kv_tokens_that_fit(config: ModelConfig, vocab_size: int, mp: int, dtype: str, seq: int, gpu_bytes: int,
                       rows: int = 0, kv_dtype: str | None = None) -> int:
    """Tokens of KV cache (all sequences together) that fit `gpu_bytes` next to the weights and the reserve, by
    kv_capacity's arithmetic (the engine's), with the decode graphs' pool of `rows` sequences (0: none) and not
    capped by the rows: what the paged cache holds, shared by however many sequences run."""
    return plan_capacity(config, vocab_size, mp, dtype, seq, rows, gpu_bytes, graphs=rows > 0,
                         kv_dtype=kv_dtype).fit_tokens


# ---------------------------------------------------------------- the paged KV cache: one capacity computation

BLOCK_SIZE = 16  # tokens per KV-cache block (vLLM's default); EngineConfig.block_size


def sequences_that_fit(kv_tokens: int, length: int, block_size: int = BLOCK_SIZE) -> int:
    """Sequences of `length` tokens a cache of `kv_tokens` holds at once: each takes whole blocks."""
    return (kv_tokens // block_size) // max(1, -(-length // block_size))


# The decode graphs' memory pool: one decode step of `rows` sequences peaks at about STEP_LOGIT_COPIES x the fp32
# logits over the vocabulary (logits, softmax, top-p sort, sampling); on an H200 (2026-11-30, 7B shape, 1,024 rows)
# one eager step peaked at 1.50 GiB (12.3 copies) and capturing every bucket took 2.1 GiB, hence the pool factor
# over the step's peak and a margin. The engine measures the step (engine.graphs.step_peak_bytes); the plan, which
# has no GPU, estimates it.
STEP_LOGIT_COPIES = 13
GRAPH_POOL_FACTOR = 1.5
GRAPH_POOL_MARGIN = 512 * 2**20


def decode_step_bytes(config: ModelConfig, vocab_size: int, rows: int) -> int:
    """Estimated peak bytes of one decode step of `rows` sequences beyond the weights (what the engine measures)."""
    return STEP_LOGIT_COPIES * rows * vocab_size * 4


def graph_pool_bytes(step_bytes: int) -> int:
    """What the captured decode graphs keep, from one step's peak (0: no graphs)."""
    return int(GRAPH_POOL_FACTOR * step_bytes) + GRAPH_POOL_MARGIN if step_bytes > 0 else 0


@dataclass(frozen=True)
class KvCapacity:
    """What the paged KV cache of one GPU holds: `blocks` blocks of `block_size` tokens (the scratch block not
    counted), at most what `rows` sequences of max_seq_len `seq` need; `budget` is the bytes left for it."""

    blocks: int
    block_size: int
    seq: int
    rows: int
    budget: int
    block_bytes: int
    kv_dtype: str = ""  # the cache's (kv_cache_bytes' name): fp8, or the compute dtype

    @property
    def tokens(self) -> int:
        return self.blocks * self.block_size

    @property
    def fit_tokens(self) -> int:
        """Tokens the budget holds before the cap at `rows` sequences of max_seq_len."""
        return max(0, self.budget) // self.block_bytes * self.block_size if self.block_bytes > 0 else 0

    @property
    def bytes(self) -> int:
        return self.blocks * self.block_bytes

    def sequences(self, length: int | None = None) -> int:
        """Sequences of `length` tokens (default max_seq_len) that fit at once, in whole blocks, at most `rows`."""
        return min(self.rows, sequences_that_fit(self.tokens, min(self.seq, length or self.seq), self.block_size))

    @property
    def fits_one(self) -> bool:
        """At least one sequence of max_seq_len fits: the engine refuses to start below that."""
        return self.blocks >= -(-self.seq // self.block_size)

    def words(self, typical: int | None = None) -> str:
        """'KV cache 58.0 GiB = 118,000 tokens: holds about 290 sequences of ~400 tokens at once, 115 of max_seq_len
        1024 (max_batch_size 1024 is an upper limit)'."""
        typical = max(1, min(self.seq, typical or self.seq))
        head = f"KV cache{' (fp8)' if self.kv_dtype == 'fp8' else ''} {fmt_gib(self.bytes)} = {self.tokens:,} tokens: "
        if self.sequences() >= self.rows:  # capped by max_batch_size: say that more would fit
            more = self.fit_tokens // (-(-typical // self.block_size) * self.block_size)
            return head + (f"all max_batch_size {self.rows} sequences at once, even at max_seq_len {self.seq}"
                           + (f" (memory for about {more} of ~{typical} tokens: a higher max_batch_size runs more "
                              "at once)" if more > self.rows else ""))
        of_max = f", {self.sequences()} of max_seq_len {self.seq}" if typical < self.seq else ""
        advice = fp8_advice(self.tokens, self.rows, self.seq, self.kv_dtype)
        fp8 = f"; {advice}" if advice else ""
        return head + (f"holds about {self.sequences(typical)} sequences of ~{typical} tokens at once{of_max} "
                       f"(max_batch_size {self.rows} is an upper limit){fp8}")


def kv_capacity(config: ModelConfig, mp: int, dtype: str, seq: int, rows: int, gpu_bytes: int,
                held: int, step_bytes: int = 0, kv_dtype: str | None = None,
                block_size: int = BLOCK_SIZE) -> KvCapacity:
    """THE capacity arithmetic, shared by the run plan (fit.verdict, run.plan) and the engine (engine.kv_cache_blocks),
    so they cannot disagree: of `gpu_bytes` (what this process may use: the card, or gpu_memory_utilization x it),
    minus `held` (the weights: the plan counts them, the engine reads what its allocator holds), minus the reserve
    (overhead_bytes: CUDA context, NCCL, one prefill step's activations, int8's dequantized weights) and the decode
    graphs' pool (graph_pool_bytes of `step_bytes`), whole blocks of KV cache, never more than `rows` sequences of
    max_seq_len `seq` need. `dtype` is the weights' (memory.weight_dtype), `kv_dtype` the compute dtype the cache
    is kept in (default: 16 bit, fp32 for fp32)."""
    block_bytes = kv_cache_bytes(config, mp, 1, block_size, kv_dtype or dtype)
    budget = gpu_bytes - held - overhead_bytes(config, mp, dtype, seq) - graph_pool_bytes(step_bytes)
    per_seq = -(-seq // block_size)
    blocks = min(max(0, budget // block_bytes), rows * per_seq) if block_bytes > 0 else 0
    return KvCapacity(int(blocks), block_size, seq, rows, int(budget), block_bytes, kv_dtype or dtype)


def usable_bytes(total: int, free: int, held: int, fraction: float = 1.0) -> int:
    """What one process may use of its GPU: gpu_memory_utilization x the GPU's total (vLLM's meaning), or less when
    other processes hold memory: what is free now plus what this process holds (its allocator's reserved bytes
    and its CUDA context). `torch.cuda.mem_get_info` alone ignores a set_per_process_memory_fraction cap."""
    return min(int(fraction * total), free + held + CUDA_CONTEXT_BYTES)


def plan_capacity(config: ModelConfig, vocab_size: int, mp: int, dtype: str, seq: int, rows: int, gpu_bytes: int,
                  graphs: bool = True, kv_dtype: str | None = None) -> KvCapacity:
    """kv_capacity as the plan sees it before anything runs: the weights counted exactly, the decode step of `rows`
    sequences estimated (with `graphs`: the CUDA-graph pool the engine keeps)."""
    step = decode_step_bytes(config, vocab_size, rows) if graphs else 0
    return kv_capacity(config, mp, dtype, seq, rows, gpu_bytes,
                       weight_bytes_per_rank(config, vocab_size, mp, dtype), step, kv_dtype)


def fmt_gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"
