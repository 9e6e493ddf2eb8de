"""`llamakit recipe` (placeholder until its issue lands)."""

from __future__ import annotations

from llamakit.cli.app import app, not_yet


@app.command("recipe", hidden=True, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def recipe_cmd() -> None:
    """(not implemented yet)"""
    not_yet("recipe")
