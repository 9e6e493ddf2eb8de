"""`llamakit reshard`: rewrite a checkpoint for another number of GPUs (parse, call reshard(), print)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

from llamakit.cli.app import app, console, err_console
from llamakit.units import human_bytes


HELP = (
    "Rewrite a checkpoint for another number of GPUs: 65B from 8 shards to 2, 7B from 1 to 2, 13B from 2 to 1.\n\n"
    "Streams one tensor at a time through memory-mapped input: peak RAM is about 3x the largest output tensor "
    "(65B to 2 shards: 0.3 GiB) plus ~0.6 GiB for Python/torch, never the whole model. Needs free disk for the "
    "new copy (65B: 122 GiB in fp16).\n\n"
    "Work goes into DST.partial-<pid> and is renamed to DST only once complete, with params.json, "
    "tokenizer.model and a fresh checklist.chk; the leftover partial folder of a killed run is removed on the "
    "next attempt."
)


@app.command("reshard", help=HELP)
def reshard_cmd(
    src: Path = typer.Argument(..., help="Meta checkpoint folder (consolidated.NN.pth + params.json)."),
    dst: Path = typer.Argument(..., help="New folder to write; must not exist or be empty."),
    mp: int = typer.Option(..., "--mp", help="Number of output shards = number of GPUs that will run it."),
    dtype: str = typer.Option("keep", "--dtype", help="Weights dtype to write: keep, bf16 or fp16."),
    tokenizer: Path = typer.Option(None, "--tokenizer",
                                   help="tokenizer.model to put in DST (default: SRC's, else SRC's parent's)."),
) -> None:
    """Rewrite a checkpoint for another number of GPUs (see HELP)."""
    from llamakit.checkpoint.reshard import reshard  # torch: imported only when the command runs

    bar = Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                   TransferSpeedColumn(), TimeRemainingColumn(), console=err_console, transient=True)
    tasks: dict[str, int] = {}

    def progress(phase: str, done: int, total: int) -> None:
        if not tasks:  # started at the first byte written: an error before that is one line, no bar residue
            bar.start()
        if phase not in tasks:
            label = "writing shards" if phase == "write" else "checksums"
            tasks[phase] = bar.add_task(label, total=total)
        bar.update(tasks[phase], completed=done, total=total)

    try:
        result = reshard(src, dst, mp, dtype=dtype, tokenizer=tokenizer, progress=progress)
    finally:
        if tasks:
            bar.stop()
    for path in result.cleaned:
        console.print(f"removed {path.name}, left by an interrupted reshard")
    console.print(f"wrote {result.dst}: MP {result.mp_in} -> {result.mp_out}, {result.dtype}, "
                  f"{human_bytes(result.shard_bytes)} per shard, {result.seconds:.0f} s")
    console.print(result.tokenizer)
    if result.streaming:
        console.print(f"peak RAM for tensors: about {human_bytes(result.peak_ram_bytes)} (one tensor at a time)")
    else:
        console.print(f"this torch has no serialization.skip_data: each shard was built in RAM "
                      f"({human_bytes(result.peak_ram_bytes)}); torch >= 2.5 streams one tensor at a time")
    console.print(f"next: llamakit inspect {result.dst}")
