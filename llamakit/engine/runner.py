"""Model runner: turns scheduler decisions into padded tensors, model steps and sampled tokens."""

from __future__ import annotations

import torch

from llamakit.engine.api import EngineConfig
from llamakit.engine.sampler import sample
from llamakit.engine.scheduler import Sequence
from llamakit.model.kv_cache import KVCache
from llamakit.model.llama import Transformer


class ModelRunner:
    """Owns the model and its KV cache on one rank; every rank of a model-parallel group runs the same steps."""

    def __init__(self, model: Transformer, cache: KVCache, cfg: EngineConfig, pad_id: int = 0):
        self.model = model
        self.cache = cache
        self.cfg = cfg
        self.device = model.device
        self.pad_id = pad_id
        self.kv_bucket = 64 if self.device.type == "cuda" else 1
        self.graphs = None
        if cfg.fast and self.device.type == "cuda":
            from llamakit.engine.graphs import GraphDecoder

            self.graphs = GraphDecoder(model, cache, cfg)

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[int]:
        keys = torch.tensor([s.request.key for s in seqs], dtype=torch.int64, device=self.device)
        steps = torch.tensor([len(s.generated) for s in seqs], dtype=torch.int64, device=self.device)
        toks = sample(logits, self.cfg.temperature, self.cfg.top_p, self.cfg.seed, keys, steps)
        return toks.tolist()

    def prefill(self, seqs: list[Sequence]) -> list[int]:
        """Run whole prompts into their slots; return the first generated token of each."""
        t = max(s.prompt_len for s in seqs)
        if self.device.type == "cuda":  # fewer distinct shapes for cuBLAS/attention: pad to a multiple of 32
            t = min(-(-t // 32) * 32, self.cache.max_seq_len)
        tokens = torch.full((len(seqs), t), self.pad_id, dtype=torch.int64)
        for i, s in enumerate(seqs):
            tokens[i, : s.prompt_len] = torch.tensor(s.request.prompt_tokens, dtype=torch.int64)
        lengths = torch.tensor([s.prompt_len for s in seqs], dtype=torch.int64)
        slots = torch.tensor([s.slot for s in seqs], dtype=torch.int64)
        logits = self.model.prefill(tokens.to(self.device), lengths.to(self.device), slots.to(self.device), self.cache)
        return self._sample(logits, seqs)

    def decode(self, seqs: list[Sequence]) -> list[int]:
        """One decode step for the running sequences, which occupy slots 0..len(seqs)-1 in order."""
        assert all(s.slot == i for i, s in enumerate(seqs)), "running sequences must be compacted"
        if self.graphs is not None:
            return self.graphs([s.generated[-1] for s in seqs], [s.next_pos for s in seqs],
                               [s.request.key for s in seqs], [len(s.generated) for s in seqs])
        tokens = torch.tensor([s.generated[-1] for s in seqs], dtype=torch.int64, device=self.device)
        positions = [s.next_pos for s in seqs]
        pos = torch.tensor(positions, dtype=torch.int64, device=self.device)
        if self.cfg.fast:  # fused kernels (their eager twins off GPU), no CUDA graph
            return self._sample(self.model.decode_fast(tokens, pos, self.cache), seqs)
        # plain path: SDPA over the first kv_len positions of every slot (the reference the fast path is tested on)
        need = max(positions) + 1
        kv_len = min(self.cache.max_seq_len, -(-need // self.kv_bucket) * self.kv_bucket)
        return self._sample(self.model.decode(tokens, pos, self.cache, kv_len), seqs)

    def move(self, src: int, dst: int, length: int) -> None:
        self.cache.move_slot(src, dst, length)
