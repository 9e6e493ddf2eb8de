"""CUDA graphs for decode steps: one graph per batch-size bucket, captured once before the first request,
replayed every step (a 7B step is ~1,000 kernels: launching them one by one would cost more than running them).
The block table is a static buffer too, so the whole paged step (cache writes and attention) is in the graph."""

from __future__ import annotations

import torch

from llamakit.engine.api import EngineConfig
from llamakit.engine.sampler import sample
from llamakit.model.kv_cache import KVCache
from llamakit.model.llama import Transformer

BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768,
           896, 1024, 1280, 1536, 1792, 2048)


class GraphDecoder:
    """Static input buffers + one captured graph (model step + sampling) per batch bucket."""

    def __init__(self, model: Transformer, cache: KVCache, cfg: EngineConfig, rows: int, max_blocks: int,
                 capture: bool = True):
        self.model, self.cache, self.cfg = model, cache, cfg
        n = rows
        self.buckets = sorted({b for b in BUCKETS if b < n} | {n})
        dev = model.device
        self.inputs = torch.zeros((4, n), dtype=torch.int64, device=dev)  # tokens, pos, keys, steps
        self.staging = torch.zeros((4, n), dtype=torch.int64).pin_memory()
        self.table = torch.zeros((n, max_blocks), dtype=torch.int32, device=dev)
        self.table_staging = torch.zeros((n, max_blocks), dtype=torch.int32).pin_memory()
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        if capture:
            self._capture_all()

    def _step(self, b: int) -> torch.Tensor:
        tok, pos, keys, steps = self.inputs[:, :b]
        logits = self.model.decode_fast(tok, pos, self.cache, self.table[:b])
        return sample(logits, self.cfg.temperature, self.cfg.top_p, self.cfg.seed, keys, steps)

    @torch.inference_mode()
    def _capture_all(self) -> None:
        """Capture largest first so smaller graphs reuse its memory pool. Warm-up steps write k/v into the
        scratch block only (the block table is all zeros)."""
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for b in reversed(self.buckets):
                self._step(b)
        torch.cuda.current_stream().wait_stream(stream)
        for b in reversed(self.buckets):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self.outputs[b] = self._step(b)
            pool = g.pool()
            self.graphs[b] = g
        torch.cuda.synchronize()

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def __call__(self, table: torch.Tensor, tokens: list[int], pos: list[int], keys: list[int],
                 steps: list[int]) -> list[int]:
        """One step for rows 0..len(tokens)-1; `table` is the host block table of the whole bucket (padding rows
        point at the scratch block)."""
        n = len(tokens)
        b = self.bucket(n)
        assert table.shape[0] == b
        self.table_staging[:b].copy_(table)
        self.table[:b].copy_(self.table_staging[:b], non_blocking=True)
        st = self.staging
        st[:, :b].zero_()  # padding rows: token 0 at position 0 of the scratch block
        st[0, :n] = torch.tensor(tokens)
        st[1, :n] = torch.tensor(pos)
        st[2, :n] = torch.tensor(keys)
        st[3, :n] = torch.tensor(steps)
        self.inputs[:, :b].copy_(st[:, :b], non_blocking=True)
        self.graphs[b].replay()
        return self.outputs[b][:n].tolist()


@torch.inference_mode()
def step_peak_bytes(model: Transformer, cfg: EngineConfig, rows: int) -> int:
    """Peak bytes one decode step of `rows` sequences allocates beyond the weights (fp32 logits and top-p sampling
    over the whole vocabulary dominate): what the captured graphs' memory pool keeps. Measured by running the step
    once on a 2-block scratch cache, before the real cache takes the free memory."""
    att = model.layers[0].attention
    scratch = KVCache(model.cfg.n_layers, 2, cfg.block_size, att.n_kv, att.head_dim, model.dtype, model.device)
    dec = GraphDecoder(model, scratch, cfg, rows, 1, capture=False)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    dec._step(rows)
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del dec, scratch
    torch.cuda.empty_cache()
    return int(peak)
