"""Continuous batching over a paged KV cache: which sequences run, in which row, holding which blocks; knows
nothing of tensors."""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from llamakit.engine.api import Completion, Request, SamplingParams
from llamakit.engine.block_manager import BlockManager
from llamakit.engine.stopping import Stopping, Tracker, attach
from llamakit.errors import LlamakitError


@dataclass(eq=False)
class Sequence:
    request: Request
    max_new: int  # max_gen_len, clamped so prompt + generated fits max_seq_len
    order: int  # arrival order: the newest running sequence is preempted first
    generated: list[int] = field(default_factory=list)
    blocks: list[int] = field(default_factory=list)  # KV-cache blocks, in position order
    slot: int = -1  # row of the decode batch while running, -1 while queued
    track: Tracker | None = field(default=None, repr=False)  # stop rules and logprobs (engine.stopping)

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_tokens)

    @property
    def prefill_tokens(self) -> list[int]:
        """What a prefill runs: the prompt, plus what was generated before a preemption (recomputed)."""
        return self.request.prompt_tokens + self.generated

    @property
    def prefill_len(self) -> int:
        return self.prompt_len + len(self.generated)

    @property
    def next_pos(self) -> int:
        """Cache position of the token fed in the next decode step (the last generated one)."""
        return self.prompt_len + len(self.generated) - 1


class Scheduler:
    """Admits queued sequences while rows (max_batch_size) and free KV blocks allow; before each decode step,
    gives every running sequence room for one more token, preempting the newest ones (their blocks freed, put
    back at the head of the queue, recomputed from prompt + generated tokens when readmitted) if blocks run out.
    With `reserve_whole` (batch_invariant on the plain path, whose prefill and decode sum in different orders) a
    sequence is admitted only with the blocks of its whole length (prompt + max_new), so none is ever preempted.
    Running sequences keep rows 0..n-1 (a hole is filled by moving the last one down), so a decode step is a
    prefix of the batch buffers; moving a row moves no cache data, only its block-table row."""

    def __init__(self, n_slots: int, max_seq_len: int, eos_ids: Iterable[int], prefill_tokens: int,
                 blocks: BlockManager, stopping: Stopping | None = None, reserve_whole: bool = False):
        self.n_slots = n_slots
        self.max_seq_len = max_seq_len
        self.eos_ids = tuple(eos_ids)  # the tokenizer's stop ids (eos; Llama 3: end_of_text, eom, eot)
        self.stopping = stopping or Stopping(self.eos_ids, SamplingParams())
        self.prefill_tokens = prefill_tokens
        self.blocks = blocks
        self.reserve_whole = reserve_whole
        # admission keeps ~1% of the blocks free for running sequences to grow into (fewer preemptions)
        self.watermark = blocks.usable_blocks // 100
        self.queue: deque[Sequence] = deque()
        self.slots: list[Sequence | None] = [None] * n_slots
        self._order = itertools.count()
        self.preemptions = 0
        self.chained = 0  # decode steps launched before the previous step's tokens were read (chain_rows)
        self.peak_running = 0
        self.peak_tokens = 0

    def add(self, requests: Iterable[Request]) -> None:
        """Queue requests; one that could never fit the whole cache (its prompt + 1, or at its end prompt +
        max_new - 1 tokens and the next one's block) is refused here: it would wait for blocks forever."""
        for req in requests:
            max_new = max(1, min(req.max_gen_len, self.max_seq_len - len(req.prompt_tokens)))
            need = self.blocks.blocks_for(len(req.prompt_tokens) + max_new)
            if need > self.blocks.usable_blocks:
                size = self.blocks.usable_blocks * self.blocks.block_size
                raise LlamakitError(
                    f"request {req.key}: its prompt ({len(req.prompt_tokens)} tokens) and up to {max_new} new "
                    f"tokens need {need * self.blocks.block_size} tokens of KV cache, more than the whole cache "
                    f"({size} tokens)", f"shorten the prompt to at most max_seq_len - max_gen_len tokens, or give "
                    f"the KV cache more room (raise max_seq_len or kv_cache_tokens, int8 weights, a higher MP)")
            self.queue.append(Sequence(req, max_new, next(self._order)))

    @property
    def running(self) -> list[Sequence]:
        return [s for s in self.slots if s is not None]

    def has_work(self) -> bool:
        return bool(self.queue) or any(s is not None for s in self.slots)

    def admit(self) -> list[list[Sequence]]:
        """Move queued sequences (in order) into free rows while their blocks (prefill + the first decode token)
        are free; returns prefill groups bounded by padded tokens."""
        admitted: list[Sequence] = []
        free_rows = [i for i, s in enumerate(self.slots) if s is None]
        nothing_running = len(free_rows) == self.n_slots
        for slot in free_rows:
            if not self.queue:
                break
            seq = self.queue[0]
            need = self._admission_blocks(seq)
            reserve = 0 if (nothing_running and not admitted) else self.watermark
            if need + reserve > self.blocks.n_free:
                break  # first come, first served: later (shorter) requests do not overtake
            self.queue.popleft()
            attach(seq, self.stopping)
            seq.blocks = self.blocks.allocate(need)
            seq.slot = slot
            self.slots[slot] = seq
            admitted.append(seq)
        admitted.sort(key=lambda s: s.prefill_len)
        groups: list[list[Sequence]] = []
        for seq in admitted:  # ascending length: a group's padded size is (count) x (its last length)
            if groups and (len(groups[-1]) + 1) * seq.prefill_len <= self.prefill_tokens:
                groups[-1].append(seq)
            else:
                groups.append([seq])
        return groups

    def record(self, seqs: list[Sequence], tokens: list[int], infos: list | None = None) -> list[Completion]:
        """Append one sampled token per sequence (with its logprobs info, if any); free and return the ones that
        finished (eos, stop id, stop string or length: engine.stopping decides)."""
        done = []
        for i, (seq, tok) in enumerate(zip(seqs, tokens)):
            assert seq.track is not None
            c = seq.track.add(seq.generated, seq.max_new, tok, infos[i] if infos else None)
            if c is not None:
                done.append(c)
                self._release(seq)
        return done

    def schedule_decode(self) -> list[Sequence]:
        """Give each running sequence a block for the token it writes next (oldest first), preempting the newest
        when none is free; then compact rows. Returns the decode batch in row order."""
        by_age = sorted(self.running, key=lambda s: s.order)
        first, last = 0, len(by_age)  # by_age[first:last]: not yet served, not preempted (no list.pop(0): O(n^2))
        while first < last:
            seq = by_age[first]
            first += 1
            while not self.blocks.grow(seq.blocks, seq.next_pos + 1):
                if first < last:
                    last -= 1
                    victim = by_age[last]
                else:
                    victim = seq
                self._preempt(victim)
                if victim is seq:
                    break
        self.compact()
        running = self.running
        self.peak_running = max(self.peak_running, len(running))
        self.peak_tokens = max(self.peak_tokens, sum(s.next_pos + 1 for s in running))
        return running

    def chain_rows(self, rows: list[Sequence | None]) -> list[Sequence | None] | None:
        """The rows of a step launched before the tokens of the step in flight on `rows` are read (engine.graphs
        chain): the same rows, less the sequences that end by length with the token in flight (None: a finished
        row, which computes on a scratch position). None when the batch should change first: a waiting sequence
        can be admitted, more than 1/32 of the rows are finished, or a sequence cannot get its next block."""
        nxt = [s if s is not None and len(s.generated) + 1 < s.max_new else None for s in rows]
        live = [s for s in nxt if s is not None]
        if not live or 32 * (len(nxt) - len(live)) > len(nxt) or self._can_admit():
            return None
        for s in live:  # the chained step writes the position after the token in flight
            if not self.blocks.grow(s.blocks, s.next_pos + 2):
                return None
        self.peak_running = max(self.peak_running, len(live))
        self.peak_tokens = max(self.peak_tokens, sum(s.next_pos + 2 for s in live))
        self.chained += 1
        return nxt

    def _can_admit(self) -> bool:
        if not self.queue or all(s is not None for s in self.slots):
            return False
        return self._admission_blocks(self.queue[0]) + self.watermark <= self.blocks.n_free

    def _admission_blocks(self, seq: Sequence) -> int:
        """Blocks a sequence takes when admitted: its prefill and first decode token, or its whole length."""
        if self.reserve_whole:
            return self.blocks.blocks_for(seq.prompt_len + seq.max_new)
        return self.blocks.blocks_for(seq.prefill_len + 1)

    def compact(self) -> None:
        """Fill holes below the last running row by moving the last running sequence down."""
        lo, hi = 0, self.n_slots - 1
        while True:
            while lo < self.n_slots and self.slots[lo] is not None:
                lo += 1
            while hi >= 0 and self.slots[hi] is None:
                hi -= 1
            if lo >= hi:
                return
            seq = self.slots[hi]
            assert seq is not None
            seq.slot = lo
            self.slots[lo], self.slots[hi] = seq, None

    def _release(self, seq: Sequence) -> None:
        self.blocks.free(seq.blocks)
        self.slots[seq.slot] = None
        seq.slot = -1

    def _preempt(self, seq: Sequence) -> None:
        """Free the sequence's blocks and requeue it first; its generated tokens are kept and recomputed."""
        self._release(seq)
        self.queue.appendleft(seq)
        self.preemptions += 1
