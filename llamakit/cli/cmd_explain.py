"""`llamakit explain [WORD]`: the glossary and params.json texts of checks/explain.yaml (read via llamakit.explain)."""

from __future__ import annotations

from typing import Optional

import typer

from llamakit.cli.app import app, console
from llamakit.glossary import glossary_markdown, lookup


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
