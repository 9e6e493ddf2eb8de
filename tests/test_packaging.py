"""Packaging stays in step: environment.yml names what pyproject needs, CI runs the README's test command,
and the data under checks/ and recipes/ ships inside the wheel."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~\[ ;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def test_environment_yml_names_every_dependency():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    deps = env["dependencies"]
    assert any(str(d).startswith("python") for d in deps) and "pip" in deps
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    names = {_name(p) for p in pip if not p.startswith("-")}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    required = {_name(d) for d in project["dependencies"]}
    assert required <= names, f"environment.yml misses {required - names}"
    assert any(p.replace(" ", "") in ("-e.", ".") for p in pip), "the package itself must be installed via pip"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh)?\n(.*?)```", readme, re.S)
    assert len(blocks) >= 2, "README must open with the install+demo command and the test command"
    test_cmd = blocks[1].strip().splitlines()[-1].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_cmd in ci.splitlines(), f"CI must run exactly {test_cmd!r}"
    assert "llamakit run" in blocks[0]


def test_python_and_torch_ranges():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.10"
    torch_req = next(d for d in project["dependencies"] if _name(d) == "torch")
    from packaging.specifiers import SpecifierSet

    assert SpecifierSet(torch_req[len("torch"):]).contains("2.13.0")
    assert project["scripts"]["llamakit"] == "llamakit.cli:main"


@pytest.mark.slow
def test_wheel_ships_checks_and_recipes(tmp_path):
    pytest.importorskip("hatchling")
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                           str(tmp_path), str(ROOT)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    wheel = next(tmp_path.glob("llamakit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "llamakit/_data/recipes/demo.yaml" in names
    assert any(n.startswith("llamakit/_data/checks/") and n.endswith(".yaml") for n in names)
    assert "llamakit/assets/corpus.txt" in names
