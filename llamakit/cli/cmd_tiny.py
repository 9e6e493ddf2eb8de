"""`llamakit make-tiny`: write a tiny Meta-format checkpoint for demos and tests."""

from __future__ import annotations

from pathlib import Path

import typer

from llamakit.cli.app import app, console

# kept here so `--help` does not import torch (a test keeps it equal to llamakit.checkpoint.tiny.STYLES)
STYLES = ("llama1", "llama2", "llama2-gqa", "llama2-kv8", "llama3", "llama3.1")


@app.command("make-tiny")
def make_tiny_cmd(
    out_dir: Path = typer.Argument(..., help="Folder to create (must be new or empty)."),
    mp: int = typer.Option(1, "--mp", help="Number of shards (model-parallel size): 1, 2 or 4; "
                           "8 with --style llama2-kv8, llama3 or llama3.1 (70B's split)."),
    style: str = typer.Option("llama2", "--style", help=f"Checkpoint style: {', '.join(STYLES)}."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random weights."),
) -> None:
    """Write a tiny random-weight checkpoint in exact Meta format (seconds on CPU, no download)."""
    from llamakit.checkpoint.tiny import make_tiny

    path = make_tiny(out_dir, mp=mp, style=style, seed=seed)
    console.print(f"wrote tiny {style} checkpoint, MP={mp}: {path}")
