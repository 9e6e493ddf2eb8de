"""The engine behind `llamakit run`: builds this rank's model and cache, then runs continuous batching."""

from __future__ import annotations

import logging
from typing import Iterable, Iterator

import torch

from llamakit.checkpoint.layout import DTYPES
from llamakit.checkpoint.shards import Checkpoint
from llamakit.engine.api import Completion, EngineConfig, Request
from llamakit.engine.runner import ModelRunner
from llamakit.engine.scheduler import Scheduler
from llamakit.memory import CUDA_CONTEXT_BYTES, PREFILL_TOKENS, overhead_bytes, weight_dtype
from llamakit.model.kv_cache import KVCache
from llamakit.model.llama import Transformer, model_parallel_info

log = logging.getLogger("llamakit.engine")

EOS_ID = 2  # Meta's SentencePiece tokenizer: bos 1, eos 2 (the default when no tokenizer's stop_ids are given)


class BatchEngine:
    """Continuous batching over a fixed set of KV-cache slots (see Scheduler), one model step at a time."""

    def __init__(self, runner: ModelRunner, cfg: EngineConfig, stop_ids: Iterable[int] = (EOS_ID,)):
        self.runner = runner
        self.cfg = cfg
        self.stop_ids = frozenset(stop_ids)
        self.n_slots = runner.cache.n_slots
        prefill_tokens = PREFILL_TOKENS if runner.device.type == "cuda" else 2048
        self.prefill_tokens = max(prefill_tokens, cfg.max_seq_len)

    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        sched = Scheduler(self.n_slots, self.cfg.max_seq_len, self.stop_ids, self.prefill_tokens)
        sched.add(requests)
        while sched.has_work():
            for group in sched.admit():
                yield from sched.record(group, self.runner.prefill(group))
            for src, dst, length in sched.compact():
                self.runner.move(src, dst, length)
            running = sched.running
            if running:
                yield from sched.record(running, self.runner.decode(running))


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
                 stop_ids: Iterable[int] = (EOS_ID,)) -> BatchEngine:
    """Build the engine on this rank (after torch.distributed and fairscale model parallel are initialised).

    `rank` is the model-parallel rank (defaults to fairscale's); it picks shard consolidated.<rank>.pth.
    `stop_ids`: the tokenizer's (Tokenizer.stop_ids); generation of a sequence ends on any of them.
    """
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
    return engine_for_model(model, cfg, _kv_slots(cfg, model_cfg, mp_size, dtype, device), stop_ids)


def engine_for_model(model: Transformer, cfg: EngineConfig, n_slots: int,
                     stop_ids: Iterable[int] = (EOS_ID,)) -> BatchEngine:
    """An engine around an already built model: a KV cache of `n_slots` sequences, its runner, the scheduler."""
    mc = model.cfg
    n_kv_local = mc.kv_heads // model_parallel_info()[1]
    cache = KVCache(mc.n_layers, n_slots, n_kv_local, cfg.max_seq_len, mc.head_dim, model.dtype, model.device)
    return BatchEngine(ModelRunner(model, cache, cfg), cfg, stop_ids)
