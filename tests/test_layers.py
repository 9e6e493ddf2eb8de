"""The package imports downward only (cli -> commands -> engine -> model -> checkpoint -> leaf modules): the
import-linter contract in pyproject.toml, run here so CI enforces it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_imports_follow_the_layers_in_pyproject():
    lint = Path(sys.executable).with_name("lint-imports")
    cmd = [str(lint)] if lint.exists() else [sys.executable, "-m", "importlinter.cli"]
    out = subprocess.run([*cmd, "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=REPO,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "1 kept, 0 broken" in out.stdout
