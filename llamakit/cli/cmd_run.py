"""`llamakit run RECIPE`: validate, plan and launch a resumable generation run (the work is in llamakit.run)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from llamakit.cli.app import app, console


@app.command("run")
def run_cmd(
    recipe: str = typer.Argument(..., help="Recipe .yaml file, or the name of a shipped recipe (e.g. demo)."),
    set_: list[str] = typer.Option([], "--set", help="Override a recipe key: --set max_batch_size=8 (repeatable)."),
    out: Optional[str] = typer.Option(None, "--out", help="Override out_path."),
    nproc: Optional[str] = typer.Option(None, "--nproc", help="Override nproc (auto or MP x DP)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate everything, print the plan and the torchrun "
                                 "command, start nothing."),
) -> None:
    """Generate a completion for every prompt of a recipe; re-run the same command to resume."""
    from llamakit.run.supervise import Progress as RunProgress
    from llamakit.run.plan import plan_run
    from llamakit.run.supervise import execute
    from llamakit.run.plan import describe

    flags = {"--out": ("out_path", out),
             "--nproc": ("nproc", None if nproc is None else (int(nproc) if nproc.isdigit() else nproc))}
    setup = plan_run(recipe, set_, flags)
    if dry_run:
        for line in describe(setup.plan, setup.argv):
            console.print(line, markup=False, soft_wrap=True)
        console.print("(dry run: nothing started; the run writes the plan file and picks a fresh free port)", style="dim")
        return
    console.print(f"llamakit run: {setup.plan.pending} prompts to generate, {setup.plan.already_done} already done; "
                  f"MP={setup.plan.mp} x DP={setup.plan.dp} on {setup.plan.device} ({setup.plan.dtype}); "
                  f"log: {setup.plan.log_path}", markup=False, soft_wrap=True)
    for note in setup.plan.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                   console=console, transient=False)
    task = bar.add_task("loading model", total=max(setup.plan.pending, 1), rate="")

    def show(p: RunProgress) -> None:
        bar.update(task, completed=p.done, description="generating" if p.done else "loading model",
                   rate=f"{p.tok_per_s:.1f} tok/s" if p.done else "")

    if setup.plan.pending:
        with bar:
            summary = execute(setup, show)
    else:
        summary = execute(setup, None)
    for line in summary.lines():
        console.print(line, markup=False, soft_wrap=True)
