"""The package imports downward only (cli -> commands -> engine -> model -> checkpoint -> leaf modules): the
import-linter contract in pyproject.toml, run here so CI enforces it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

LINT = ("import sys; from importlinter.cli import lint_imports; "
        "sys.exit(lint_imports(config_filename=sys.argv[1], no_cache=True, no_logo=True))")


def test_imports_follow_the_layers_in_pyproject():
    # in a process of its own: import-linter configures logging with dictConfig, which disables every logger that
    # already exists (llamakit's own), and later tests that read the run's log in-process would see nothing
    proc = subprocess.run([sys.executable, "-c", LINT, str(REPO / "pyproject.toml")], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert "0 broken" in out and "KEPT" in out
