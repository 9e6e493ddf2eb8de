"""`llamakit bench` (placeholder until its issue lands)."""

from __future__ import annotations

from llamakit.cli.app import app, not_yet


@app.command("bench", hidden=True, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_cmd() -> None:
    """(not implemented yet)"""
    not_yet("bench")
