"""`llamakit merge OUT`: part files of a multi-node or SLURM-array run into OUT, in input order (the work is in
llamakit.run.merge)."""

from __future__ import annotations

from typing import Optional

import typer

from llamakit.cli.app import app, console


@app.command("merge")
def merge_cmd(
    out: str = typer.Argument(..., help="The run's output file (out_path); its parts are OUT.part-*."),
    prompts: Optional[str] = typer.Option(None, "--prompts", help="The prompt file (default: the one the run "
                                          "recorded in its plan)."),
    partial: bool = typer.Option(False, "--partial", help="Merge even though some prompts have no row yet."),
    check: bool = typer.Option(False, "--check", help="Only report rows per file, duplicates and missing prompts."),
) -> None:
    """Merge OUT's part files into OUT in input order, each prompt once (atomically; the parts are then removed)."""
    from llamakit.run.merge import merge_output

    report = merge_output(out, prompts, partial=partial, check_only=check)
    for line in report.lines():
        console.print(line, markup=False, soft_wrap=True)
    if check:
        raise typer.Exit(1 if report.missing else 0)
    console.print(f"merged {report.rows} rows into {out} in input order", markup=False, soft_wrap=True)
