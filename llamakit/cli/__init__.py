"""The `llamakit` command line: parses arguments, calls one library function, prints its result."""

from __future__ import annotations

import atexit
import gc
import os
import sys

import typer

from llamakit import __version__
from llamakit.cli.app import app, err_console
from llamakit.errors import LlamakitError

# Each module adds its command(s) to `app`; one file per command keeps them independent.
from llamakit.cli import cmd_tiny, cmd_doctor, cmd_inspect, cmd_run, cmd_status, cmd_reshard, cmd_bench, cmd_recipe, cmd_explain, cmd_score, cmd_merge  # noqa: E402,F401,I001


def _version(value: bool) -> None:
    if value:
        print(f"llamakit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors."),
) -> None:
    """llamakit: doctor, inspect and run for Meta-format LLaMA checkpoints."""
    if debug:
        os.environ["LLAMAKIT_DEBUG"] = "1"


def main() -> None:
    """Console-script entry: run the app; the project's errors become one line and exit code 2."""
    # At exit, after the atexit handlers, Python's last garbage collections walk every object torch created
    # (~0.3 s after a run's summary is printed, measured 2026-11-30); frozen objects are skipped. Every command
    # closes its files itself (outputs, log, lock), and the interpreter flushes stdout and stderr either way.
    atexit.register(gc.freeze)
    try:
        app()  # standalone mode: click prints usage errors itself and exits
    except LlamakitError as e:
        if os.environ.get("LLAMAKIT_DEBUG"):
            raise
        err_console.print(f"error: {e.one_line()}", markup=False, soft_wrap=True)
        sys.exit(2)
