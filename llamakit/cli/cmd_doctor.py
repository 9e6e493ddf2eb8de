"""`llamakit doctor`: can this server run that checkpoint? Parses options, runs the checks, prints, sets the exit code."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from llamakit.cli.app import app, console


@app.command("doctor")
def doctor_cmd(
    check: Optional[str] = typer.Argument(None, help="Run only this check (names: --list)."),
    ckpt_dir: Optional[Path] = typer.Option(None, "--ckpt-dir", help="Checkpoint folder to check against the GPUs."),
    recipe: Optional[Path] = typer.Option(None, "--recipe", help="Recipe whose checkpoint, batch and length to check."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
    report: Optional[Path] = typer.Option(None, "--report", help="Write everything (with collect_env) to this file."),
    strict: bool = typer.Option(False, "--strict", help="Exit 1 on warnings too."),
    fast: bool = typer.Option(False, "--fast", help="Skip the active tests (matmul per GPU, all-reduce)."),
    list_checks: bool = typer.Option(False, "--list", help="List the checks and exit."),
    master_addr: Optional[str] = typer.Option(None, "--master-addr", help="Rendezvous host of a run over several "
                                              "nodes: check it resolves and its port answers."),
    master_port: int = typer.Option(29500, "--master-port", help="Rendezvous port (with --master-addr)."),
) -> None:
    """Check Python, torch, driver, GPUs, NCCL and host; with a checkpoint: MP vs GPUs and memory fit."""
    from llamakit.doctor.cli import execute

    code = execute(console, check, ckpt_dir, recipe, as_json, report, strict, fast, list_checks,
                   master_addr=master_addr, master_port=master_port)
    raise typer.Exit(code)
