"""Model runner: turns scheduler decisions into padded tensors, model steps and sampled tokens."""

from __future__ import annotations

import torch

from llamakit.engine.api import EngineConfig
from llamakit.engine.sampler import (SamplingBuffers, TokenHistory, record_history, sample_rows, sample_step,
                                     unpack)
from llamakit.engine.scheduler import Sequence
from llamakit.model.kv_cache import KVCache
from llamakit.model.llama import Transformer

Step = tuple[list[int], list | None]  # sampled tokens, and per row (logprob, rank, top-K) when asked for


class ModelRunner:
    """Owns the model and its KV cache on one rank; every rank of a model-parallel group runs the same steps."""

    def __init__(self, model: Transformer, cache: KVCache, cfg: EngineConfig, pad_id: int = 0,
                 eos_ids: tuple[int, ...] = ()):
        self.model = model
        self.cache = cache
        self.cfg = cfg
        self.device = model.device
        self.pad_id = pad_id
        self.eos_ids = tuple(eos_ids)
        self.default = cfg.default_params()
        self.history = TokenHistory(cache.n_slots, cache.max_seq_len, self.device)
        self.rows = SamplingBuffers(cache.n_slots, self.device)  # per-row settings of decode steps
        self.kv_bucket = 64 if self.device.type == "cuda" else 1
        self.graphs = None
        if cfg.fast and self.device.type == "cuda":
            from llamakit.engine.graphs import GraphDecoder

            self.graphs = GraphDecoder(model, cache, cfg, self.history.tokens, self.rows)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence], hist: torch.Tensor | None) -> Step:
        return sample_rows(logits, seqs, self.default, self.eos_ids, hist)

    def prefill(self, seqs: list[Sequence]) -> Step:
        """Run whole prompts into their slots; return the first generated token of each."""
        t = max(s.prompt_len for s in seqs)
        if self.device.type == "cuda":  # fewer distinct shapes for cuBLAS/attention: pad to a multiple of 32
            t = min(-(-t // 32) * 32, self.cache.max_seq_len)
        tokens = torch.full((len(seqs), t), self.pad_id, dtype=torch.int64)
        for i, s in enumerate(seqs):
            tokens[i, : s.prompt_len] = torch.tensor(s.request.prompt_tokens, dtype=torch.int64)
        lengths = torch.tensor([s.prompt_len for s in seqs], dtype=torch.int64)
        slots = torch.tensor([s.slot for s in seqs], dtype=torch.int64)
        tokens = tokens.to(self.device)
        logits = self.model.prefill(tokens, lengths.to(self.device), slots.to(self.device), self.cache)
        return self._sample(logits, seqs, tokens)  # the penalties' history: the prompts themselves

    def decode(self, seqs: list[Sequence]) -> Step:
        """One decode step for the running sequences, which occupy slots 0..len(seqs)-1 in order."""
        assert all(s.slot == i for i, s in enumerate(seqs)), "running sequences must be compacted"
        mode = self.rows.stage(seqs, self.default, self.eos_ids)
        if mode == "full":
            self.history.sync(seqs, self.default)
        if self.graphs is not None and mode in self.graphs.modes:
            out = self.graphs([s.generated[-1] for s in seqs], [s.next_pos for s in seqs], mode)
            return unpack(out, mode, seqs, self.default)
        tokens = torch.tensor([s.generated[-1] for s in seqs], dtype=torch.int64, device=self.device)
        positions = [s.next_pos for s in seqs]
        pos = torch.tensor(positions, dtype=torch.int64, device=self.device)
        hist = None
        if mode == "full":
            record_history(self.history.tokens, tokens, pos)
            hist = self.history.tokens[: len(seqs)]
        if self.cfg.fast:  # fused kernels (their eager twins off GPU), no CUDA graph
            logits = self.model.decode_fast(tokens, pos, self.cache)
        else:  # plain path: SDPA over the first kv_len positions of every slot (the reference of the fast path)
            need = max(positions) + 1
            kv_len = min(self.cache.max_seq_len, -(-need // self.kv_bucket) * self.kv_bucket)
            logits = self.model.decode(tokens, pos, self.cache, kv_len)
        ints, floats = self.rows.upload(len(seqs))
        return unpack(sample_step(logits, ints, floats, hist, mode), mode, seqs, self.default)

    def move(self, src: int, dst: int, length: int) -> None:
        self.cache.move_slot(src, dst, length)
