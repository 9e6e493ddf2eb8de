"""`llamakit run RECIPE`: validate, plan and launch a resumable generation run (the work is in llamakit.run)."""

from __future__ import annotations

from typing import Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from llamakit.cli.app import app, console


NODES = "Several nodes (torchrun's words)"
SLURM = "SLURM"


@app.command("run")
def run_cmd(
    recipe: str = typer.Argument(..., help="Recipe .yaml file, or the name of a shipped recipe (e.g. demo)."),
    set_: list[str] = typer.Option([], "--set", metavar="KEY=VALUE", help="Override a recipe key: --set max_batch_size=8 (repeatable)."),
    out: Optional[str] = typer.Option(None, "--out", metavar="PATH", help="Override out_path."),
    nproc: Optional[str] = typer.Option(None, "--nproc", metavar="N", help="Override nproc (auto or MP x DP)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Validate everything, print the plan and the torchrun "
                                 "command, start nothing."),
    nnodes: Optional[int] = typer.Option(None, "--nnodes", help="Nodes of a run over several machines; start the "
                                         "same command on each (--nproc is then per node).", rich_help_panel=NODES),
    node_rank: Optional[int] = typer.Option(None, "--node-rank", help="This node's rank, 0..nnodes-1 (0 on the "
                                            "--master-addr host).", rich_help_panel=NODES),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Rendezvous host (node 0).",
                                              rich_help_panel=NODES),
    master_port: Optional[int] = typer.Option(None, "--master-port", help="Rendezvous port (default 29500).",
                                              rich_help_panel=NODES),
    rdzv_endpoint: Optional[str] = typer.Option(None, "--rdzv-endpoint", help="c10d rendezvous HOST:PORT instead "
                                                "of --master-addr (ranks are assigned).", rich_help_panel=NODES),
    rdzv_id: Optional[str] = typer.Option(None, "--rdzv-id", help="Run id for the c10d rendezvous, the same on "
                                          "every node.", rich_help_panel=NODES),
    mp_across_nodes: bool = typer.Option(False, "--mp-across-nodes", help="Allow a model-parallel group to span "
                                         "nodes (slow over Ethernet).", rich_help_panel=NODES),
    share: Optional[str] = typer.Option(None, "--share", help="K/N: generate only prompts K, K+N, ... on this "
                                        "node, alone (a SLURM array); then `llamakit merge OUT`.",
                                        rich_help_panel=NODES),
    sbatch: bool = typer.Option(False, "--sbatch", help="Print a SLURM batch script for this run instead of "
                                "running it.", rich_help_panel=SLURM),
    nodes: int = typer.Option(1, "--nodes", help="With --sbatch: nodes to ask for.", rich_help_panel=SLURM),
    gpus_per_node: Optional[int] = typer.Option(None, "--gpus-per-node", help="With --sbatch: GPUs per node "
                                                "(default: the checkpoint's MP; 0 for device: cpu).",
                                                rich_help_panel=SLURM),
    partition: Optional[str] = typer.Option(None, "--partition", help="With --sbatch: SLURM partition.",
                                            rich_help_panel=SLURM),
    time_limit: Optional[str] = typer.Option(None, "--time", help="With --sbatch: time limit, e.g. 12:00:00 (a "
                                             "job that runs out is resumed by submitting it again).",
                                             rich_help_panel=SLURM),
    array: bool = typer.Option(False, "--array", help="With --sbatch: each of --nodes runs its share alone (a "
                               "SLURM array, no network between nodes); merge with `llamakit merge OUT`.",
                               rich_help_panel=SLURM),
) -> None:
    """Generate a completion for every prompt of a recipe; re-run the same command to resume."""
    from llamakit.run.terminal import detach_terminal, hang_up_detaches

    hang_up_detaches()  # first: a closed SSH session during the seconds of imports and planning must not end the run
    import shlex
    import sys

    from llamakit.run.output import sample_rows
    from llamakit.run.plan import describe, plan_run
    from llamakit.run.progress import Progress as RunProgress
    from llamakit.run.progress import fmt_duration
    from llamakit.run.supervise import execute

    flags = {"--out": ("out_path", out),
             "--nproc": ("nproc", None if nproc is None else (int(nproc) if nproc.isdigit() else nproc))}
    if sbatch:
        from llamakit.run.sbatch import sbatch_for_recipe

        again = [a for k, v in (("--out", out), ("--nproc", nproc)) if v is not None for a in (k, v)]
        again += [a for kv in set_ for a in ("--set", kv)]
        typer.echo(sbatch_for_recipe(recipe, again, set_, flags, nodes, gpus_per_node, partition, time_limit, array,
                                     mp_across_nodes), nl=False)
        return
    from llamakit.run.nodes import make_nodes

    where = make_nodes(nnodes, node_rank, master_addr, master_port, rdzv_endpoint, rdzv_id, mp_across_nodes, share)
    setup = plan_run(recipe, set_, flags, nodes=where)
    if dry_run:
        for line in describe(setup.plan, setup.argv):
            console.print(line, markup=False, soft_wrap=True)
        console.print("(dry run: nothing started; the run writes the plan file and picks a fresh free port)", style="dim")
        return
    plan = setup.plan
    console.print(f"llamakit run: {plan.pending} prompts to generate, {plan.already_done} already done; "
                  f"MP={plan.mp} x DP={plan.dp} on {plan.device} ({plan.dtype}); log: {plan.log_path}",
                  markup=False, soft_wrap=True)
    for note in plan.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    if plan.pending:
        console.print(f"it goes on if this terminal closes; from any shell: llamakit status {shlex.quote(plan.out_path)}",
                      markup=False, soft_wrap=True, style="dim")
    command = shlex.join(["llamakit", *sys.argv[1:]])
    if plan.pending and console.is_terminal:
        bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                       console=console, transient=False)
        task = bar.add_task("loading model", total=max(plan.pending, 1), rate="", eta="")

        def show(p: RunProgress) -> None:
            bar.update(task, completed=p.done, description="generating" if p.phase == "generating" else
                       ("loading model" if p.phase == "loading" else p.phase),
                       rate=f"{p.tok_per_s_1m:.1f} tok/s" if p.done else "",
                       eta=f"ETA {fmt_duration(p.eta_s)}" if p.eta_s is not None else "")

        summary = None
        try:
            with bar:
                summary = execute(setup, show, command)
        except OSError:  # the terminal went away without a hang-up signal: the run is done, its summary in the log
            if summary is None:
                raise
            detach_terminal()
    else:  # not a terminal (a file, a pipe, nohup): plain lines every 30 s and at each 10 % of the prompts

        def plain(p: RunProgress) -> None:
            if p.due:
                try:
                    console.print(p.line(), markup=False, soft_wrap=True)
                except OSError:  # a pipe whose reader is gone: the run goes on, the line is in the log
                    detach_terminal()

        summary = execute(setup, plain, command)
    lines = summary.lines()
    if setup.loaded.recipe.ckpt_dir.startswith("builtin:"):  # the demo: show what came out
        samples = sample_rows(plan.out_path, 3)
        if samples:
            lines.append("a few generated texts (prompt -> completion):")
            lines += [f"  {prompt} -> {completion.strip()}" for prompt, completion in samples]
    try:
        for line in lines:
            console.print(line, markup=False, soft_wrap=True)
    except OSError:  # nobody is reading any more (the summary is in the log)
        detach_terminal()
