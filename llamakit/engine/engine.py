"""The engine behind `llamakit run`: builds this rank's model and cache, then runs continuous batching."""

from __future__ import annotations

import logging
from typing import Callable, Iterable, Iterator, Sequence

import torch

from llamakit.checkpoint.layout import DTYPES
from llamakit.checkpoint.shards import Checkpoint
from llamakit.engine.api import Completion, EngineConfig, Request
from llamakit.engine.runner import ModelRunner
from llamakit.engine.scheduler import Scheduler
from llamakit.engine.stopping import Stopping
from llamakit.memory import CUDA_CONTEXT_BYTES, PREFILL_TOKENS, overhead_bytes, weight_dtype
from llamakit.model.kv_cache import KVCache
from llamakit.model.llama import Transformer, model_parallel_info
from llamakit.tokenizer import Tokenizer, find_tokenizer

log = logging.getLogger("llamakit.engine")


class BatchEngine:
    """Continuous batching over a fixed set of KV-cache slots (see Scheduler), one model step at a time.
    `eos_ids` are the tokenizer's stop ids (eos; Llama 3: end_of_text, eom, eot; empty: never stop at eos);
    `decode` (ids -> text) is needed for stop strings."""

    def __init__(self, runner: ModelRunner, cfg: EngineConfig, eos_ids: Sequence[int],
                 decode: Callable[[list[int]], str] | None = None):
        self.runner = runner
        self.cfg = cfg
        self.eos_ids = tuple(eos_ids)
        self.stopping = Stopping(self.eos_ids, cfg.default_params(), decode)
        self.n_slots = runner.cache.n_slots
        prefill_tokens = PREFILL_TOKENS if runner.device.type == "cuda" else 2048
        self.prefill_tokens = max(prefill_tokens, cfg.max_seq_len)

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        sched = Scheduler(self.n_slots, self.cfg.max_seq_len, self.eos_ids, self.prefill_tokens, self.stopping)
        sched.add(requests)
        while sched.has_work():
            for group in sched.admit():
                yield from sched.record(group, *self.runner.prefill(group))
            for src, dst, length in sched.compact():
                self.runner.move(src, dst, length)
            running = sched.running
            if running:
                yield from sched.record(running, *self.runner.decode(running))


def _kv_slots(cfg: EngineConfig, model_cfg, mp: int, dtype: torch.dtype, device: torch.device) -> int:
    """Slots for the KV cache: max_batch_size, fewer if the GPU's free memory cannot hold them (logged). What stays
    free for activations is the memory plan's own overhead (llamakit.memory), less the CUDA context already held."""
    want = cfg.max_batch_size
    if device.type != "cuda":
        return want
    free, _ = torch.cuda.mem_get_info(device)
    n_kv_local = model_cfg.kv_heads // mp
    per_slot = KVCache.bytes_needed(model_cfg.n_layers, 1, n_kv_local, cfg.max_seq_len, model_cfg.head_dim, dtype)
    reserve = overhead_bytes(model_cfg, mp, weight_dtype(cfg.dtype, cfg.quantize), cfg.max_seq_len) - CUDA_CONTEXT_BYTES
    fit = max(1, (free - reserve) // per_slot)
    if fit < want:
        log.warning("KV cache: %d slots of %d tokens fit in free GPU memory (asked for max_batch_size=%d)",
                    fit, cfg.max_seq_len, want)
    return int(min(want, fit))


def build_engine(ckpt: Checkpoint, cfg: EngineConfig, rank: int | None = None,
                 tokenizer: Tokenizer | None = None) -> BatchEngine:
    """Build the engine on this rank (after torch.distributed and fairscale model parallel are initialised).

    `rank` is the model-parallel rank (defaults to fairscale's); it picks shard consolidated.<rank>.pth.
    `tokenizer` (default: the one next to the checkpoint) gives the stop ids (Tokenizer.stop_ids: eos, for Llama 3
    also eom and eot; cfg.eos_id replaces them when set) and the text that stop strings are looked for in.
    """
    tok = tokenizer or Tokenizer(find_tokenizer(ckpt.path))
    eos_ids = eos_ids_for(tok, cfg.eos_id)
    mp_rank, mp_size = model_parallel_info()
    rank = mp_rank if rank is None else rank
    if mp_size != ckpt.mp:
        raise RuntimeError(f"model-parallel size {mp_size} != checkpoint shards {ckpt.mp}")
    device = torch.device("cuda", torch.cuda.current_device()) if cfg.device == "cuda" else torch.device("cpu")
    dtype = DTYPES[cfg.dtype]
    model_cfg = ckpt.config.with_vocab(ckpt.vocab_rows)
    shard = ckpt.load(rank)
    model = Transformer.from_shard(model_cfg, shard, cfg.max_seq_len, dtype, device, cfg.quantize,
                                   vocab_parallel=ckpt.vocab_parallel)
    del shard
    if device.type == "cuda":
        torch.cuda.empty_cache()  # the loading temporaries (fused qkv/w13, casts) go back: free memory is real
    def decode(ids: list[int]) -> str:  # stop-string text: a chat prompt's tail holds <|eot_id|> of its last turn
        return tok.decode(ids, cut_at_stop=False)

    return engine_for_model(model, cfg, _kv_slots(cfg, model_cfg, mp_size, dtype, device), eos_ids, decode)


def eos_ids_for(tok: Tokenizer, eos_id: int | None) -> tuple[int, ...]:
    """The ids that end a sequence like eos: the tokenizer's stop ids, or the one `eos_id` set (-1: none)."""
    if eos_id is None:
        return tuple(sorted(tok.stop_ids))
    return (eos_id,) if eos_id >= 0 else ()


def engine_for_model(model: Transformer, cfg: EngineConfig, n_slots: int, eos_ids: Sequence[int],
                     decode: Callable[[list[int]], str] | None = None) -> BatchEngine:
    """An engine around an already built model: a KV cache of `n_slots` sequences, its runner, the scheduler."""
    mc = model.cfg
    n_kv_local = mc.kv_heads // model_parallel_info()[1]
    cache = KVCache(mc.n_layers, n_slots, n_kv_local, cfg.max_seq_len, mc.head_dim, model.dtype, model.device)
    return BatchEngine(ModelRunner(model, cache, cfg, eos_ids=eos_ids), cfg, eos_ids, decode)
