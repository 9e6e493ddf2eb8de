"""Continuous batching: which sequences run in which KV-cache slot; knows nothing of tensors."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable

from llamakit.engine.api import Completion, Request, SamplingParams
from llamakit.engine.stopping import Stopping, Tracker, attach


@dataclass
class Sequence:
    request: Request
    slot: int
    max_new: int  # max_gen_len, clamped so prompt + generated fits max_seq_len
    generated: list[int] = field(default_factory=list)
    track: Tracker | None = field(default=None, repr=False)  # stop rules and logprobs (engine.stopping)

    @property
    def prompt_len(self) -> int:
        return len(self.request.prompt_tokens)

    @property
    def next_pos(self) -> int:
        """Cache position of the token fed in the next decode step (the last generated one)."""
        return self.prompt_len + len(self.generated) - 1


class Scheduler:
    """Keeps running sequences in slots 0..n_active-1: a finished slot is refilled from the queue at once, or
    filled by moving the last running sequence down (so decode reads one contiguous block of the cache)."""

    def __init__(self, n_slots: int, max_seq_len: int, eos_ids: Iterable[int], prefill_tokens: int,
                 stopping: Stopping | None = None):
        self.n_slots = n_slots
        self.max_seq_len = max_seq_len
        self.eos_ids = tuple(eos_ids)  # the tokenizer's stop ids (eos; Llama 3: end_of_text, eom, eot)
        self.stopping = stopping or Stopping(self.eos_ids, SamplingParams())
        self.prefill_tokens = prefill_tokens
        self.queue: deque[Request] = deque()
        self.slots: list[Sequence | None] = [None] * n_slots

    def add(self, requests: Iterable[Request]) -> None:
        self.queue.extend(requests)

    @property
    def running(self) -> list[Sequence]:
        return [s for s in self.slots if s is not None]

    def has_work(self) -> bool:
        return bool(self.queue) or any(s is not None for s in self.slots)

    def admit(self) -> list[list[Sequence]]:
        """Move queued requests into free slots (lowest first); returns prefill groups bounded by padded tokens."""
        admitted: list[Sequence] = []
        for slot in range(self.n_slots):
            if not self.queue:
                break
            if self.slots[slot] is None:
                req = self.queue.popleft()
                max_new = max(1, min(req.max_gen_len, self.max_seq_len - len(req.prompt_tokens)))
                seq = attach(Sequence(req, slot, max_new), self.stopping)
                self.slots[slot] = seq
                admitted.append(seq)
        admitted.sort(key=lambda s: s.prompt_len)
        groups: list[list[Sequence]] = []
        for seq in admitted:  # ascending length: a group's padded size is (count) x (its last length)
            if groups and (len(groups[-1]) + 1) * seq.prompt_len <= self.prefill_tokens:
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
                self.slots[seq.slot] = None
        return done

    def compact(self) -> list[tuple[int, int, int]]:
        """Fill holes below the last running slot by moving sequences down; returns (src, dst, length) copies."""
        moves = []
        lo, hi = 0, self.n_slots - 1
        while True:
            while lo < self.n_slots and self.slots[lo] is not None:
                lo += 1
            while hi >= 0 and self.slots[hi] is None:
                hi -= 1
            if lo >= hi:
                return moves
            seq = self.slots[hi]
            assert seq is not None
            moves.append((hi, lo, seq.next_pos))
            seq.slot = lo
            self.slots[lo], self.slots[hi] = seq, None
