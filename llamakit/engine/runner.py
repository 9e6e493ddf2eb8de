"""Model runner: turns scheduler decisions into padded tensors and block tables, model steps and sampled tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from llamakit.engine.api import EngineConfig
from llamakit.engine.sampler import (SamplingBuffers, TokenHistory, record_history, sample_rows, sample_step,
                                     unpack)
from llamakit.engine.scheduler import Sequence
from llamakit.model.kv_cache import KVCache
from llamakit.model.llama import Transformer

Step = tuple[list[int], list | None]  # sampled tokens, and per row (logprob, rank, top-K) when asked for


class BlockTables:
    """Host copy of the decode batch's block table [rows, max_blocks], updated only where it changed: a row is
    rewritten when another sequence moves into it, and a block appended when its sequence grows."""

    def __init__(self, rows: int, max_blocks: int):
        self.host = torch.zeros((rows, max_blocks), dtype=torch.int32)
        self._owner: list[Sequence | None] = [None] * rows
        self._len = [0] * rows

    def update(self, seqs: list[Sequence | None], rows: int) -> torch.Tensor:
        """Rows 0..len(seqs)-1 hold `seqs` (None: a finished row), the others up to `rows` point at the scratch
        block; returns host[:rows]."""
        for i, s in enumerate(seqs):
            if s is None:
                if self._owner[i] is not None or self._len[i]:
                    self.host[i].zero_()
                    self._owner[i], self._len[i] = None, 0
                continue
            n = len(s.blocks)
            if self._owner[i] is not s or self._len[i] > n:
                self.host[i, :n] = torch.tensor(s.blocks, dtype=torch.int32)
                self._owner[i], self._len[i] = s, n
            elif self._len[i] < n:
                self.host[i, self._len[i]:n] = torch.tensor(s.blocks[self._len[i]:], dtype=torch.int32)
                self._len[i] = n
        for i in range(len(seqs), rows):
            if self._owner[i] is not None or self._len[i]:
                self.host[i].zero_()
                self._owner[i], self._len[i] = None, 0
        return self.host[:rows]


@dataclass
class Launched:
    """A decode step launched without waiting (greedy and sample steps through CUDA graphs): its rows (None: a
    finished row whose token is ignored), mode and bucket; `ModelRunner.result` reads its tokens."""

    rows: list[Sequence | None]
    mode: str
    bucket: int
    handle: tuple[int, int]


class ModelRunner:
    """Owns the model and its KV cache on one rank; every rank of a model-parallel group runs the same steps."""

    def __init__(self, model: Transformer, cache: KVCache, cfg: EngineConfig, max_rows: int, pad_id: int = 0,
                 eos_ids: tuple[int, ...] = ()):
        self.model = model
        self.cache = cache
        self.cfg = cfg
        self.device = model.device
        self.pad_id = pad_id
        self.eos_ids = tuple(eos_ids)
        self.default = cfg.default_params()
        self.max_blocks = -(-cfg.max_seq_len // cache.block_size)
        self.tables = BlockTables(max_rows, self.max_blocks)
        self.history = TokenHistory(max_rows, cfg.max_seq_len, self.device)
        self.rows = SamplingBuffers(max_rows, self.device)  # per-row settings of decode steps
        self.kv_bucket = 64 if self.device.type == "cuda" else 1
        self.graphs = None
        if cfg.fast:  # CUDA graphs on GPUs; elsewhere the same static buffers and chained steps, run eagerly
            from llamakit.engine.graphs import GraphDecoder

            self.graphs = GraphDecoder(model, cache, cfg, self.history.tokens, self.rows, self.max_blocks,
                                       capture=self.device.type == "cuda")

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence], hist: torch.Tensor | None) -> Step:
        return sample_rows(logits, seqs, self.default, self.eos_ids, hist)

    def prefill(self, seqs: list[Sequence]) -> Step:
        """Run whole sequences (prompt, plus tokens generated before a preemption: recomputed) into their blocks;
        return the next token of each."""
        t = max(s.prefill_len for s in seqs)
        if self.device.type == "cuda":  # fewer distinct shapes for cuBLAS/attention: pad to a multiple of 32
            t = min(-(-t // 32) * 32, self.cfg.max_seq_len)
        tokens = torch.full((len(seqs), t), self.pad_id, dtype=torch.int64)
        table = torch.zeros((len(seqs), self.max_blocks), dtype=torch.int32)
        for i, s in enumerate(seqs):
            tokens[i, : s.prefill_len] = torch.tensor(s.prefill_tokens, dtype=torch.int64)
            table[i, : len(s.blocks)] = torch.tensor(s.blocks, dtype=torch.int32)
            self.history.held[s.slot] = (-1, -1)  # a readmitted sequence's old row content is stale
        lengths = torch.tensor([s.prefill_len for s in seqs], dtype=torch.int64)
        tokens = tokens.to(self.device)
        logits = self.model.prefill(tokens, lengths.to(self.device), table.to(self.device), self.cache)
        return self._sample(logits, seqs, tokens)  # the penalties' history: the sequences themselves

    @torch.inference_mode()
    def warm_prefill(self, max_tokens: int) -> None:
        """Run prefills of 64, 128, ... max_tokens tokens into the scratch block (a zero block table), so the GEMM
        kernels of those sizes are loaded before the first request: on a fresh process each new size cost a
        prompt's first token ~40 ms (bench's time to first token, H200, 2026-11-30)."""
        t_max = self.cfg.max_seq_len // 32 * 32 or self.cfg.max_seq_len
        n = 64
        while n <= max_tokens:
            t = min(n, t_max)
            rows = max(1, n // t)  # never more than n tokens: the memory plan reserves a prefill of max_tokens
            tokens = torch.zeros((rows, t), dtype=torch.int64, device=self.device)
            lengths = torch.full((rows,), t, dtype=torch.int64, device=self.device)
            table = torch.zeros((rows, self.max_blocks), dtype=torch.int32, device=self.device)
            self.model.prefill(tokens, lengths, table, self.cache)
            n *= 2
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def launch(self, seqs: list[Sequence]) -> Launched | Step:
        """Stage the step's rows and launch it without waiting for the tokens when a CUDA graph serves the step and
        feeds the next one (greedy, sample): a Launched step; otherwise run it with `decode` and return its tokens."""
        mode = self.rows.stage(seqs, self.default, self.eos_ids)
        if self.graphs is None or mode not in self.graphs.modes or mode == "full":
            return self.decode(seqs, mode)
        b = self.graphs.bucket(len(seqs))
        table = self.tables.update(seqs, b)
        handle = self.graphs.launch(table, [s.generated[-1] for s in seqs], [s.next_pos for s in seqs], mode)
        return Launched(list(seqs), mode, b, handle)

    def chain(self, step: Launched, rows: list[Sequence | None]) -> Launched:
        """Launch the step after `step` on the same rows (Scheduler.chain_rows: None for finished rows) before
        `step`'s tokens are read: its inputs are what `step` left on the device."""
        assert self.graphs is not None
        table = self.tables.update(rows, step.bucket)
        handle = self.graphs.chain(table, [0 if s is None else 1 for s in rows], step.mode)
        return Launched(rows, step.mode, step.bucket, handle)

    def result(self, step: Launched) -> list[int]:
        """The launched step's token per row (waits for that step only)."""
        assert self.graphs is not None
        return self.graphs.result(step.handle)

    def decode(self, seqs: list[Sequence], mode: str) -> Step:
        """One decode step for the running sequences, which occupy rows 0..len(seqs)-1 in order, run and read at once;
        their rows already staged (`mode`: what SamplingBuffers.stage returned, see `launch`)."""
        assert all(s.slot == i for i, s in enumerate(seqs)), "running sequences must be compacted"
        if mode == "full":
            self.history.sync(seqs, self.default)
        if self.graphs is not None and mode in self.graphs.modes:
            table = self.tables.update(seqs, self.graphs.bucket(len(seqs)))
            out = self.graphs(table, [s.generated[-1] for s in seqs], [s.next_pos for s in seqs], mode)
            return unpack(out, mode, seqs, self.default)
        table = self.tables.update(seqs, len(seqs)).to(self.device)
        tokens = torch.tensor([s.generated[-1] for s in seqs], dtype=torch.int64, device=self.device)
        positions = [s.next_pos for s in seqs]
        pos = torch.tensor(positions, dtype=torch.int64, device=self.device)
        hist = None
        if mode == "full":
            record_history(self.history.tokens, tokens, pos)
            hist = self.history.tokens[: len(seqs)]
        if self.cfg.fast:  # fused kernels (their eager twins off GPU), no CUDA graph
            logits = self.model.decode_fast(tokens, pos, self.cache, table)
        else:  # plain path: SDPA over the first kv_len positions of every row (the reference of the fast path)
            need = max(positions) + 1
            kv_len = min(self.cfg.max_seq_len, -(-need // self.kv_bucket) * self.kv_bucket)
            if self.cfg.batch_invariant:  # the same key count for every batch: each row's sums in the same order
                kv_len = self.cfg.max_seq_len
            logits = self.model.decode(tokens, pos, self.cache, table, kv_len)
        ints, floats = self.rows.upload(len(seqs))
        return unpack(sample_step(logits, ints, floats, hist, mode), mode, seqs, self.default)
