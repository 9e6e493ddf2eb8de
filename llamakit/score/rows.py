"""A text's output row from the scores of its windows: statistics, optional per-token lists, input fields."""

from __future__ import annotations

from typing import Any

from llamakit.score.reduce import TokenScores
from llamakit.score.stats import text_stats


def score_row(text_id: Any, extra: dict[str, Any], token_ids: list[int], parts: list[TokenScores],
              per_token: bool, with_reference: bool) -> dict[str, Any]:
    """`parts`: the text's windows in order; `token_ids`: the scored tokens (the text's own, in order)."""
    s = TokenScores.cat(parts)
    if len(token_ids) != len(s.logprob):
        raise RuntimeError(f"text {text_id!r}: {len(s.logprob)} scores for {len(token_ids)} tokens")
    lp, rk, ent = s.logprob.tolist(), s.rank.tolist(), s.entropy.tolist()
    row: dict[str, Any] = {"id": text_id}
    row.update(text_stats(lp, rk, ent, s.mu.tolist(), s.s2.tolist(), with_reference))
    if per_token:
        row.update(token_ids=list(token_ids), token_logprobs=lp, token_ranks=rk, token_entropies=ent)
    row.update(extra)
    return row

