"""The package imports downward only (cli -> commands -> engine -> model -> checkpoint -> leaf modules): the
import-linter contract in pyproject.toml, run here so CI enforces it."""

from __future__ import annotations

from pathlib import Path

from importlinter.cli import lint_imports

REPO = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers_in_pyproject(capsys, monkeypatch):
    monkeypatch.chdir(REPO)  # the contract names llamakit: this checkout's, as the tests import it
    rc = lint_imports(config_filename=str(REPO / "pyproject.toml"), no_cache=True, no_logo=True)
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "0 broken" in out and "KEPT" in out
