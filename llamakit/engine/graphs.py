"""CUDA graphs for decode steps: one graph per batch-size bucket, captured once before the first request,
replayed every step (a 7B step is ~1,000 kernels: launching them one by one would cost more than running them).
The block table is a static buffer too, so the whole paged step (cache writes and attention) is in the graph."""

from __future__ import annotations

import torch

from llamakit.engine.api import EngineConfig
from llamakit.engine.sampler import MODES, SamplingBuffers, record_history, sample_step
from llamakit.model.kv_cache import KVCache
from llamakit.model.llama import Transformer

BUCKETS = (1, 2, 4, 8, 12, 16, 24, 32, 48, 64, 80, 96, 112, 128, 160, 192, 224, 256, 320, 384, 448, 512, 640, 768,
           896, 1024, 1280, 1536, 1792, 2048)


class GraphDecoder:
    """Static input buffers + one captured graph (model step + sampling) per batch bucket and sampling mode
    (engine.sampler: greedy, sample, full). Per-row sampling settings are rows of the static buffers."""

    def __init__(self, model: Transformer, cache: KVCache, cfg: EngineConfig, history: torch.Tensor,
                 rows: SamplingBuffers, max_blocks: int, capture: bool = True):
        self.model, self.cache, self.cfg = model, cache, cfg
        self.history = history  # [rows, max_seq_len] token ids, read by the full mode's penalties
        self.rows = rows  # the per-row sampling settings, staged by the runner before each replay
        n = rows.ints.shape[1]
        self.buckets = sorted({b for b in BUCKETS if b < n} | {n})
        self.modes = tuple(m for m in MODES if m in cfg.graph_modes)
        dev = model.device
        self.inputs = torch.zeros((2, n), dtype=torch.int64, device=dev)  # tokens, pos
        self.staging = torch.zeros((2, n), dtype=torch.int64).pin_memory()
        self.table = torch.zeros((n, max_blocks), dtype=torch.int32, device=dev)  # block table, static too
        self.table_staging = torch.zeros((n, max_blocks), dtype=torch.int32).pin_memory()
        self.graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        if capture:
            self._capture_all()

    def _step(self, b: int, mode: str) -> torch.Tensor:
        tok, pos = self.inputs[0, :b], self.inputs[1, :b]
        logits = self.model.decode_fast(tok, pos, self.cache, self.table[:b])
        if mode == "full":
            record_history(self.history, tok, pos)
        return sample_step(logits, self.rows.ints[:, :b], self.rows.floats[:, :b], self.history[:b], mode)

    @torch.inference_mode()
    def _capture_all(self) -> None:
        """Capture largest first so smaller graphs reuse its memory pool. Warm-up steps write k/v into the
        scratch block only (the block table is all zeros)."""
        pool = None
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for mode in self.modes:
                for b in reversed(self.buckets):
                    self._step(b, mode)
        torch.cuda.current_stream().wait_stream(stream)
        for mode in self.modes:
            for b in reversed(self.buckets):
                g = torch.cuda.CUDAGraph()
                with torch.cuda.graph(g, pool=pool):
                    self.outputs[mode, b] = self._step(b, mode)
                pool = g.pool()
                self.graphs[mode, b] = g
        torch.cuda.synchronize()

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    def __call__(self, table: torch.Tensor, tokens: list[int], pos: list[int], mode: str) -> torch.Tensor:
        """Replay the step (sampling rows staged in self.rows); returns the graph's output rows (read them before
        the next call). `table` is the host block table of the whole bucket (padding rows point at the scratch
        block)."""
        n = len(tokens)
        b = self.bucket(n)
        assert table.shape[0] == b
        self.table_staging[:b].copy_(table)
        self.table[:b].copy_(self.table_staging[:b], non_blocking=True)
        st = self.staging
        st[:, :b].zero_()  # padding rows: token 0 at position 0 of the scratch block
        st[0, :n] = torch.tensor(tokens)
        st[1, :n] = torch.tensor(pos)
        self.inputs[:, :b].copy_(st[:, :b], non_blocking=True)
        self.rows.upload(b)
        self.graphs[mode, b].replay()
        return self.outputs[mode, b][:n]


@torch.inference_mode()
def step_peak_bytes(model: Transformer, cfg: EngineConfig, rows: int, max_seq_len: int) -> int:
    """Peak bytes one decode step of `rows` sequences allocates beyond the weights (fp32 logits and sampling over
    the whole vocabulary dominate), the largest over the captured modes: what the graphs' memory pool keeps.
    Measured by running the steps once on a 2-block scratch cache, before the real cache takes the free memory."""
    att = model.layers[0].attention
    scratch = KVCache(model.cfg.n_layers, 2, cfg.block_size, att.n_kv, att.head_dim, model.dtype, model.device)
    history = torch.zeros((rows, max_seq_len), dtype=torch.int64, device=model.device)
    dec = GraphDecoder(model, scratch, cfg, history, SamplingBuffers(rows, model.device), 1, capture=False)
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    peak = 0
    for mode in dec.modes:
        torch.cuda.reset_peak_memory_stats()
        dec._step(rows, mode)
        torch.cuda.synchronize()
        peak = max(peak, torch.cuda.max_memory_allocated() - base)
    del dec, scratch, history
    torch.cuda.empty_cache()
    return int(peak)
