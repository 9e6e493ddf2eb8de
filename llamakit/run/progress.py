"""Run progress, one definition everywhere (bar, plain lines, log, summary, status): rows, tok/s, ETA.

Generated tok/s = completion tokens of the rows this run wrote / seconds since generation began (the first
replica's engine was ready, so model loading does not count). "Last minute" is the same ratio over the last 60 s.
ETA = rows still to do / rows per second over the last minute; shown once the first rows are in.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass


def fmt_duration(seconds: float) -> str:
    """0:01:23 (h:mm:ss), the way the bar shows times."""
    s = max(0, int(round(seconds)))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


@dataclass
class Progress:
    """Rows written so far by this run (all replicas), for the bar, the plain lines, the log and `status`."""

    done: int  # rows this run wrote
    total: int  # rows this run has to write
    tokens: int  # completion tokens of those rows
    gen_seconds: float  # seconds since generation began; 0 while the model loads
    since_start: float  # seconds since the launch
    tok_per_s_1m: float = 0.0  # over the last minute
    eta_s: float | None = None  # None until the first rows are in
    due: bool = False  # a plain progress line is due now (every 30 s, and at each 10 % of the rows)
    stage: str | None = None  # before generation: what the run waits for, e.g. "waiting for the other nodes ..."

    @property
    def phase(self) -> str:
        if self.gen_seconds > 0 or self.done:
            return "generating"
        return self.stage if self.stage and self.stage != "loading" else "loading"

    @property
    def tok_per_s(self) -> float:
        """Overall: completion tokens / seconds since generation began."""
        return self.tokens / self.gen_seconds if self.gen_seconds > 0 else 0.0

    def line(self) -> str:
        """The plain progress line (stdout not a terminal, and the log)."""
        pct = f" ({100 * self.done // self.total}%)" if self.total else ""
        if self.phase != "generating":
            doing = "loading the model" if self.phase == "loading" else self.phase
            return f"progress: {doing}, 0/{self.total} rows, {fmt_duration(self.since_start)} since start"
        eta = f", ETA {fmt_duration(self.eta_s)}" if self.eta_s is not None else ""
        return (f"progress: {self.done}/{self.total} rows{pct}, {self.tok_per_s_1m:.1f} tok/s last minute, "
                f"{self.tok_per_s:.1f} tok/s overall{eta}")


class Tracker:
    """Turns (rows, tokens) samples into Progress; decides when a plain line is due."""

    WINDOW = 60.0
    EVERY = 30.0

    def __init__(self, total: int, now: float | None = None):
        self.total = total
        self.start = time.time() if now is None else now
        self.gen_start: float | None = None
        self.samples: deque[tuple[float, int, int]] = deque()  # (time, rows, tokens) since generation began
        self.last_line = self.start
        self.last_decile = 0
        self.last_rows = 0
        self.finished: float | None = None
        self.last: Progress | None = None

    def began(self, when: float) -> None:
        """Generation began at `when` (a replica's engine was ready); the first call wins."""
        if self.gen_start is None:
            self.gen_start = when
            self.samples.append((when, 0, 0))

    def update(self, rows: int, tokens: int, now: float | None = None, final: bool = False,
               stage: str | None = None) -> Progress:
        now = time.time() if now is None else now
        if rows and self.gen_start is None:  # rows without a ready mark (an older worker): the rows mark it
            self.began(now)
        if rows >= self.total and self.finished is None:
            self.finished = now  # the last row: the rate stops here, not when the processes have exited
        end = self.finished if self.finished is not None else now
        gen = end - self.gen_start if self.gen_start is not None else 0.0
        rate_1m, eta = 0.0, None
        if self.gen_start is not None:
            self.samples.append((end, rows, tokens))
            while len(self.samples) > 2 and self.samples[1][0] <= end - self.WINDOW:
                self.samples.popleft()
            t0, r0, k0 = self.samples[0]
            span = end - t0
            if span > 0:
                rate_1m = (tokens - k0) / span
                row_rate = (rows - r0) / span
                if rows and row_rate > 0:
                    eta = max(0, self.total - rows) / row_rate
                elif rows >= self.total:
                    eta = 0.0
        decile = 10 * rows // self.total if self.total else 10
        due = (final and rows != self.last_rows) or now - self.last_line >= self.EVERY or decile > self.last_decile
        if due:
            self.last_line, self.last_decile, self.last_rows = now, decile, rows
        self.last = Progress(rows, self.total, tokens, gen, now - self.start, rate_1m, eta, due, stage)
        return self.last
