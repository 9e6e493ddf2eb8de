"""The typer application object and the shared console; command modules attach themselves to `app`."""

from __future__ import annotations

import typer
from rich.console import Console

app = typer.Typer(
    name="llamakit",
    help="Run Meta-format LLaMA checkpoints on the GPUs you have.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: typer's rich help prints `--flag <bool>` for every flag
    context_settings={"help_option_names": ["-h", "--help"]},
)
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)

