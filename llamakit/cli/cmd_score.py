"""`llamakit score RECIPE`: validate, plan and launch a resumable scoring run (the work is in llamakit.score)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llamakit.cli.app import app, console


@app.command("score")
def score_cmd(
    recipe: str = typer.Argument(..., help="Score recipe .yaml file (text_path, out_path, ckpt_dir, ...)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set per_token=true (repeatable)."),
    out: Optional[str] = typer.Option(None, "--out", help="Override out_path."),
    nproc: Optional[str] = typer.Option(None, "--nproc", help="Override nproc (auto or MP x DP)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate everything, print the plan and the torchrun "
                                 "command, start nothing."),
) -> None:
    """Score every text of a recipe (logprob, rank, entropy, detector statistics); re-run to resume."""
    from llamakit.score.launch import describe, execute_score, plan_score

    flags = {"--out": ("out_path", out),
             "--nproc": ("nproc", None if nproc is None else (int(nproc) if nproc.isdigit() else nproc))}
    setup = plan_score(recipe, set_, flags)
    plan = setup.plan
    if dry_run:
        for line in describe(plan, setup.argv):
            console.print(line, markup=False, soft_wrap=True)
        console.print("(dry run: nothing started; the run writes the plan file and picks a fresh free port)",
                      style="dim")
        return
    console.print(f"llamakit score: {plan.pending} texts to score, {plan.already_done} already done; MP={plan.mp} x "
                  f"DP={plan.dp} on {plan.device} ({plan.dtype}); log: {plan.log_path}", markup=False, soft_wrap=True)
    for note in plan.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                   console=console, transient=False)
    task = bar.add_task("loading model", total=max(plan.pending, 1), rate="")

    def show(p) -> None:
        bar.update(task, completed=p.done, description="scoring" if p.done else "loading model",
                   rate=f"{p.tok_per_s:.1f} tok/s" if p.done else "")

    if plan.pending:
        with bar:
            summary = execute_score(setup, show)
    else:
        summary = execute_score(setup, None)
    for line in summary.lines():
        console.print(line, markup=False, soft_wrap=True)
