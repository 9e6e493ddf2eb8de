"""CUDA graphs for decode steps: one graph per batch-size bucket, captured once before the first request,
replayed every step (a 7B step is ~1,000 kernels: launching them one by one would cost more than running them).
The block table is a static buffer too, so the whole paged step (cache writes and attention) is in the graph.

Greedy and sample steps also feed themselves: the step writes its tokens into the next step's input and advances
positions and step counts on the device, so the engine can launch step N+1 before it reads step N's tokens
(`chain`): the host's bookkeeping of step N then runs while the GPU computes N+1. Without capture (CPU, tests)
the same buffers run the step eagerly."""

from __future__ import annotations

import torch

from llamakit.engine.api import EngineConfig
from llamakit.engine.sampler import INT_ROWS, MODES, SamplingBuffers, record_history, sample_step
from llamakit.model.kv_cache import KVCache, cache_dtype
from llamakit.model.llama import Transformer

STEP_ROW = INT_ROWS.index("step")
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
        pin = dev.type == "cuda"

        def host(shape, dtype):
            t = torch.zeros(shape, dtype=dtype)
            return t.pin_memory() if pin else t

        self.inputs = torch.zeros((2, n), dtype=torch.int64, device=dev)  # tokens, pos
        self.live = torch.zeros(n, dtype=torch.int64, device=dev)  # 1: a running row; 0: padding or finished
        self.staging = host((2, n), torch.int64)
        self.staging_np = self.staging.numpy()  # a 1,024-int list: 38 us through numpy, 280 us via torch.tensor
        self.table = torch.zeros((n, max_blocks), dtype=torch.int32, device=dev)  # block table, static too
        # two of each host buffer a launch copies from or into: step N+1 is staged while step N may still run
        self.table_staging = host((2, n, max_blocks), torch.int32)
        self.live_staging = host((2, n), torch.int64)
        self.live_np = self.live_staging.numpy()
        self.results = host((2, n), torch.int64)
        self.events = [torch.cuda.Event() if pin else None for _ in range(2)]
        self._k = 0
        self.graphs: dict[tuple[str, int], torch.cuda.CUDAGraph] = {}
        self.outputs: dict[tuple[str, int], torch.Tensor] = {}
        self.captured = capture
        if capture:
            self._capture_all()

    def _step(self, b: int, mode: str) -> torch.Tensor:
        tok, pos = self.inputs[0, :b], self.inputs[1, :b]
        logits = self.model.decode_fast(tok, pos, self.cache, self.table[:b])
        if mode == "full":
            record_history(self.history, tok, pos)
        out = sample_step(logits, self.rows.ints[:, :b], self.rows.floats[:, :b], self.history[:b], mode)
        if mode != "full":  # the next step's inputs, should the engine chain it (see `chain`)
            tok.copy_(out)
            pos.add_(1)
            self.rows.ints[STEP_ROW, :b] += 1
        return out

    def _replay(self, mode: str, b: int) -> torch.Tensor:
        graph = self.graphs.get((mode, b))
        if graph is None:  # not captured (CPU): the same step, eagerly
            self.outputs[mode, b] = self._step(b, mode)
        else:
            graph.replay()
        return self.outputs[mode, b]

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
        """The rows a step of n sequences runs: the smallest captured bucket; n itself without graphs (eager)."""
        if not self.captured:
            return n
        return next(b for b in self.buckets if b >= n)

    def _stage_table(self, table: torch.Tensor, b: int, live: list[int] | None) -> None:
        k = self._k
        self.table_staging[k, :b].copy_(table)
        self.table[:b].copy_(self.table_staging[k, :b], non_blocking=True)
        if live is not None:
            ls = self.live_np[k]
            ls[:b] = 0
            ls[:len(live)] = live
            self.live[:b].copy_(self.live_staging[k, :b], non_blocking=True)

    def __call__(self, table: torch.Tensor, tokens: list[int], pos: list[int], mode: str) -> torch.Tensor:
        """Replay the step (sampling rows staged in self.rows); returns the graph's output rows (read them before
        the next call). `table` is the host block table of the whole bucket (padding rows point at the scratch
        block)."""
        n = len(tokens)
        b = self.bucket(n)
        assert table.shape[0] == b
        self._stage_table(table, b, [1] * n)
        st = self.staging_np
        st[:, :b] = 0  # padding rows: token 0 at position 0 of the scratch block
        st[0, :n] = tokens
        st[1, :n] = pos
        self.inputs[:, :b].copy_(self.staging[:, :b], non_blocking=True)
        self.rows.upload(b)
        return self._replay(mode, b)[:n]

    def launch(self, table: torch.Tensor, tokens: list[int], pos: list[int], mode: str) -> tuple[int, int]:
        """`__call__` without waiting: the tokens are copied to a host buffer behind the step; read them with
        `result`. Returns a handle."""
        out = self(table, tokens, pos, mode)
        return self._collect(out, len(tokens))

    def chain(self, table: torch.Tensor, live: list[int], mode: str) -> tuple[int, int]:
        """Launch the next step of the same rows from the inputs the last step left on the device (its tokens, the
        next positions and step counts). `table`: the bucket's host block table (finished rows point at scratch);
        `live`: 1 for rows still running, 0 for rows whose sequence finished (their position is reset to 0, so
        they read one scratch position). Returns a handle for `result`."""
        b = table.shape[0]
        self._stage_table(table, b, live)
        self.inputs[1, :b].mul_(self.live[:b])
        return self._collect(self._replay(mode, b), len(live))

    def _collect(self, out: torch.Tensor, n: int) -> tuple[int, int]:
        k = self._k
        self.results[k, :n].copy_(out[:n], non_blocking=True)
        if self.events[k] is not None:
            self.events[k].record()
        self._k = 1 - k
        return k, n

    def result(self, handle: tuple[int, int]) -> list[int]:
        """The tokens of a launched step (waits for that step only)."""
        k, n = handle
        if self.events[k] is not None:
            self.events[k].synchronize()
        return self.results[k, :n].tolist()


@torch.inference_mode()
def step_peak_bytes(model: Transformer, cfg: EngineConfig, rows: int, max_seq_len: int) -> int:
    """Peak bytes one decode step of `rows` sequences allocates beyond the weights (fp32 logits and sampling over
    the whole vocabulary dominate), the largest over the captured modes: what the graphs' memory pool keeps.
    Measured by running the steps once on a 2-block scratch cache, before the real cache takes the free memory."""
    att = model.layers[0].attention
    scratch = KVCache(model.cfg.n_layers, 2, cfg.block_size, att.n_kv, att.head_dim,
                      cache_dtype(cfg.kv_cache_dtype, model.dtype), model.device)
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
