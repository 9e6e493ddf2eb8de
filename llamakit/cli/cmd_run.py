"""`llamakit run` (placeholder until its issue lands)."""

from __future__ import annotations

from llamakit.cli.app import app, not_yet


@app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def run_cmd() -> None:
    """(not implemented yet)"""
    not_yet("run")
