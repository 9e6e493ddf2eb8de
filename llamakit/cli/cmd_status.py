"""`llamakit status OUT.jsonl|RECIPE`: how far is a run (running / stopped / complete), from any shell."""

from __future__ import annotations

import json

import typer

from llamakit.cli.app import app, console


@app.command("status")
def status_cmd(
    target: str = typer.Argument(..., help="The run's output (.jsonl), its recipe (.yaml), or a shipped recipe's name."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object (for scripts)."),
) -> None:
    """Rows done, tok/s, ETA, processes and their GPU memory, or how to resume a stopped run."""
    from llamakit.run.status import run_status, status_json

    st = run_status(target)
    if as_json:
        print(json.dumps(status_json(st), ensure_ascii=False))
        return
    for line in st.lines():
        console.print(line, markup=False, soft_wrap=True)
