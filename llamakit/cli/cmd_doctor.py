"""`llamakit doctor` (placeholder until its issue lands)."""

from __future__ import annotations

from llamakit.cli.app import app, not_yet


@app.command("doctor", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def doctor_cmd() -> None:
    """(not implemented yet)"""
    not_yet("doctor")
