"""Every word `llamakit explain` knows: the glossary and params.json fields of checks/explain.yaml (llamakit.explain)
plus the run and score recipe keys; lookup with suggestions, and the glossary block of docs/onboarding.md."""

from __future__ import annotations

import difflib

from llamakit.errors import LlamakitError
from llamakit.explain import Explanation


def glossary_markdown(words: list[str]) -> str:
    """The glossary block of docs/onboarding.md: one entry per word, rendered from checks/explain.yaml."""
    out = []
    for word in words:
        e = lookup(word)
        body = e.long.replace("\n", "\n  ")
        out.append(f"- **{word}**: {e.short}.\n  {body}\n")
    return "\n".join(out)


def lookup(word: str) -> Explanation:
    """The explanation of a glossary term, a params.json field or a recipe key; else an error with suggestions."""
    from llamakit.explain import explain_term, explain_texts
    from llamakit.run.recipe import KEYS

    e = explain_term(word)
    if e is not None:
        return e
    key = word.strip().lower().replace("-", "_")
    if key in KEYS:
        info = KEYS[key]
        return Explanation(key, "recipe", info.meaning, f"A recipe key: {info.meaning}.\nAllowed: {info.allowed}. "
                           "See docs/run.md for every recipe key.")
    from llamakit.score.recipe import KEYS as SCORE_KEYS

    if key in SCORE_KEYS:
        info = SCORE_KEYS[key]
        return Explanation(key, "recipe", info.meaning, f"A score recipe key: {info.meaning}.\nAllowed: "
                           f"{info.allowed}. See docs/score.md for every score recipe key.")
    texts = explain_texts()
    names = [k for section in texts.values() for k in section] + list(KEYS) + list(SCORE_KEYS)
    close = difflib.get_close_matches(key, list(dict.fromkeys(names)), n=3, cutoff=0.7)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise LlamakitError(f"no explanation for {word!r}", f"{hint}`llamakit explain` lists every word it knows")
