"""A text's statistics from its per-token scores, by the formulas of issue #17 (docs/score.md); undefined = None.

Inputs are the scored tokens only (the text's own tokens; bos and prefix condition them but are not scored).
Every value is a plain float or None (JSON null), never NaN or inf.
"""

from __future__ import annotations

import math
from typing import Sequence

# The statistics of a row, in output order; the ones that need a reference model come last.
STATS = ("n_tokens", "logprob_sum", "logprob_mean", "ppl", "logrank_mean", "lrr", "entropy_mean",
         "gltr_top10", "gltr_top100", "gltr_top1000", "fastdetect")
REFERENCE_STATS = ("xent_mean", "binoculars")
# For AUROC: the direction in which a statistic points to machine-written text is not assumed; the table gives
# AUROC of the raw value for the positive label, and 1 - AUROC tells the other direction.
SCORE_STATS = tuple(s for s in STATS + REFERENCE_STATS if s != "n_tokens")


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _div(a: float, b: float) -> float | None:
    return _finite(a / b) if b != 0 else None


def text_stats(logprobs: Sequence[float], ranks: Sequence[int], entropies: Sequence[float],
               mus: Sequence[float], s2s: Sequence[float], with_reference: bool) -> dict[str, float | int | None]:
    """All statistics of one text. mus/s2s: per-token mean and variance of log q under p (p = q without a
    reference); with a reference, -mu is the per-token cross-entropy of the reference against the scored model."""
    n = len(logprobs)
    out: dict[str, float | int | None] = {"n_tokens": n}
    if n == 0:
        out.update({k: None for k in STATS[1:]})
        if with_reference:
            out.update({k: None for k in REFERENCE_STATS})
        return out
    lp_sum = math.fsum(logprobs)
    lp_mean = lp_sum / n
    logrank_mean = math.fsum(math.log(r) for r in ranks) / n
    out["logprob_sum"] = _finite(lp_sum)
    out["logprob_mean"] = _finite(lp_mean)
    out["ppl"] = _finite(math.exp(-lp_mean)) if -lp_mean < 700 else None
    out["logrank_mean"] = logrank_mean
    out["lrr"] = _div(-lp_mean, logrank_mean)  # every token ranked first: log ranks are all 0, lrr undefined
    out["entropy_mean"] = _finite(math.fsum(entropies) / n)
    for k in (10, 100, 1000):
        out[f"gltr_top{k}"] = sum(1 for r in ranks if r <= k) / n
    var = math.fsum(s2s)
    out["fastdetect"] = _div(lp_sum - math.fsum(mus), math.sqrt(var)) if var > 0 else None
    if with_reference:
        xent = -math.fsum(mus) / n
        out["xent_mean"] = _finite(xent)
        out["binoculars"] = _div(-lp_mean, xent)
    return out
