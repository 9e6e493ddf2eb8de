"""When a sequence ends and what its completion holds: eos and stop ids, stop strings found in the decoded tail,
min_tokens, the length limit, and the logprobs collected per token. Host-side and tensor-free (the scheduler's
record step calls it once per sampled token)."""

from __future__ import annotations

import itertools
from typing import Any, Callable

from llamakit.engine.api import Completion, Request, SamplingParams, TokenLogprobs

Decode = Callable[[list[int]], str]
CONTEXT_TOKENS = 5  # prompt tokens decoded before the completion, so its first token keeps its leading space
_serial = itertools.count()


class IncrementalText:
    """The completion's text, grown token by token from a short window (vLLM's incremental detokenizing): each step
    decodes a few tokens, not the whole sequence; text is held back while a multi-byte character is incomplete."""

    def __init__(self, prompt_tokens: list[int], decode: Decode):
        self.decode = decode
        self.ids = list(prompt_tokens[-CONTEXT_TOKENS:])
        self.prefix, self.read = 0, len(self.ids)
        self.text = ""

    def add(self, token: int) -> int:
        """Append a token; returns how many characters the text grew by."""
        self.ids.append(token)
        before = self.decode(self.ids[self.prefix:self.read])
        after = self.decode(self.ids[self.prefix:])
        if len(after) <= len(before) or after.endswith("\ufffd"):
            return 0
        delta = after[len(before):]
        self.prefix, self.read = self.read, len(self.ids)
        self.text += delta
        return len(delta)


class Tracker:
    """One sequence's stop rules and collected logprobs."""

    def __init__(self, request: Request, params: SamplingParams, eos_ids: tuple[int, ...], decode: Decode | None):
        self.request, self.params = request, params
        self.serial = next(_serial)  # tells sequences apart for long-lived per-row state (sampler.TokenHistory)
        self.eos_ids = eos_ids  # the tokenizer's own stop ids: a natural end (stop_reason None), like eos
        self.stop_ids = {t for t in (*(() if params.ignore_eos else eos_ids), *params.stop_token_ids) if t >= 0}
        self.logprobs = TokenLogprobs() if params.logprobs is not None else None
        self.text: IncrementalText | None = None
        if params.stop:
            if decode is None:
                raise ValueError("stop strings need the engine's tokenizer (pass decode to the engine)")
            self.text = IncrementalText(request.prompt_tokens, decode)
            self.longest = max(len(s) for s in params.stop)

    def add(self, generated: list[int], max_new: int, token: int,
            info: tuple[float, int, list] | None) -> Completion | None:
        """Record a sampled token in `generated`; the Completion when the sequence ends with it, else None."""
        p = self.params
        if token in self.stop_ids and len(generated) >= p.min_tokens:
            reason = None if token in self.eos_ids else token
            return Completion(self.request, generated, "stop", reason, None, self.logprobs)
        generated.append(token)
        if self.logprobs is not None and info is not None:
            lp, rank, top = info
            self.logprobs.token_logprobs.append(lp)
            self.logprobs.token_ranks.append(rank)
            self.logprobs.top_logprobs.append(top)
        if self.text is not None:
            grew = self.text.add(token)
            if grew and len(generated) >= p.min_tokens:
                found = self._find_stop(grew)
                if found is not None:
                    at, s = found
                    return Completion(self.request, generated, "stop", s, self.text.text[:at], self.logprobs)
        if len(generated) >= max_new:
            return Completion(self.request, generated, "length", None, None, self.logprobs)
        return None

    def _find_stop(self, grew: int) -> tuple[int, str] | None:
        """The earliest stop string that ends in the newest text (the tail only: older text was checked before)."""
        text = self.text.text  # type: ignore[union-attr]
        start = max(0, len(text) - grew - self.longest + 1)
        best: tuple[int, str] | None = None
        for s in self.params.stop:
            at = text.find(s, start)
            if at >= 0 and (best is None or at < best[0]):
                best = (at, s)
        return best


class Stopping:
    """Starts a Tracker per request with the engine's eos, default settings and detokenizer."""

    def __init__(self, eos_ids: tuple[int, ...], default: SamplingParams, decode: Decode | None = None):
        self.eos_ids, self.default, self.decode = tuple(eos_ids), default, decode

    def start(self, request: Request) -> Tracker:
        return Tracker(request, request.params or self.default, self.eos_ids, self.decode)


def attach(seq: Any, stopping: Stopping) -> Any:
    """Give a scheduler Sequence its tracker (once; a preempted and readmitted sequence keeps its own)."""
    if getattr(seq, "track", None) is None:
        seq.track = stopping.start(seq.request)
    return seq
