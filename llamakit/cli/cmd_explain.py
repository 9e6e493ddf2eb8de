"""`llamakit explain [WORD]`: the glossary and params.json texts of checks/explain.yaml (read via llamakit.explain)."""

from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Optional

import typer

from llamakit.cli.app import app, console
from llamakit.errors import LlamakitError

if TYPE_CHECKING:
    from llamakit.explain import Explanation


def glossary_markdown(words: list[str]) -> str:
    """The glossary block of docs/onboarding.md: one entry per word, rendered from checks/explain.yaml."""
    out = []
    for word in words:
        e = lookup(word)
        body = e.long.replace("\n", "\n  ")
        out.append(f"- **{word}**: {e.short}.\n  {body}\n")
    return "\n".join(out)


def lookup(word: str) -> "Explanation":
    """The explanation of a glossary term, a params.json field or a recipe key; else an error with suggestions."""
    from llamakit.explain import Explanation, explain_term, explain_texts
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


@app.command("explain")
def explain_cmd(
    word: Optional[str] = typer.Argument(None, help="A word such as MP, world size, top_p, KV cache, shard, "
                                         "or a params.json field (dim, n_heads ...). Leave out to list them all."),
    markdown: bool = typer.Option(False, "--markdown", hidden=True,
                                  help="Print the glossary block for docs/onboarding.md (words separated by commas)."),
) -> None:
    """Explain a word you meet around LLaMA (MP, world size, rank, top_p, KV cache ...) in plain language."""
    from llamakit.explain import explain_texts

    if markdown:
        words = [w.strip() for w in (word or "").split(",") if w.strip()]
        console.print(glossary_markdown(words), end="", markup=False, soft_wrap=True, highlight=False)
        return
    if word is None:
        from rich.table import Table

        texts = explain_texts()
        for section, title in (("terms", "Words around running LLaMA"), ("params", "params.json fields")):
            t = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
            t.add_column(style="bold", no_wrap=True)
            t.add_column()
            for e in texts[section].values():
                t.add_row(e.key, e.short)
            console.print(t)
            console.print()
        console.print("llamakit explain WORD prints the full text (spelling is forgiving: 'World Size', "
                      "'local-rank').", markup=False)
        return
    e = lookup(word)
    head = {"terms": "", "params": " (params.json field)", "recipe": " (recipe key)"}.get(e.section, "")
    console.print(f"{e.key}{head}: {e.short}", style="bold", markup=False, soft_wrap=True)
    if e.aliases:
        console.print(f"also written: {', '.join(e.aliases)}", style="dim", markup=False, soft_wrap=True)
    console.print(e.long, markup=False, soft_wrap=True, highlight=False)
