"""docs/onboarding.md stays true: its troubleshooting table matches the messages in the code, its glossary is the
one in checks/explain.yaml, and its laptop walk-through runs as written to a complete, checked output file."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "onboarding.md"
MIN_LITERAL = 12  # a message showing an error object and no literal text this long only passes that error on

# Where set-up failures are defined: (file, how to find them). Add a line here when a new source appears.
FAILURE_SOURCES = [
    ("llamakit/doctor/rules/software.py", "CheckResult", "FAIL"),  # CheckResult(name, FAIL, finding, fix)
    ("llamakit/doctor/rules/host.py", "CheckResult", "FAIL"),
    ("llamakit/doctor/rules/fit.py", "CheckResult", "FAIL"),
    ("llamakit/run/plan.py", "LlamakitError", None),  # LlamakitError(what, fix, where)
]
# The set-up problems issue 9 names; each needs a row whose text mentions the keyword.
NAMED_PROBLEMS = {"CPU-only torch": "CPU-only torch", "driver too old": "is too old for torch's CUDA",
                  "no kernel image": "no kernel image", "NCCL": "NCCL", "MP mismatch": "MP mismatch",
                  "OOM": "out of memory", "port in use": "is in use"}


# ---------------------------------------------------------------- reading the doc


def section(title: str) -> str:
    """The text of one `## title` section of the doc."""
    text = DOC.read_text(encoding="utf-8")
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert m, f"docs/onboarding.md has no section '## {title}'"
    return m.group(1)


def split_row(line: str) -> list[str]:
    """Cells of a markdown table row; `\\|` is a pipe inside a cell."""
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def troubleshooting_rows() -> list[tuple[list[str], str]]:
    """(message fragments of the first column, the whole row text) for each row of the troubleshooting table."""
    rows = []
    lines = [ln for ln in section("Troubleshooting").splitlines() if ln.startswith("|")]
    assert len(lines) > 2, "the troubleshooting table is missing"
    header = split_row(lines[0])
    assert header[0].startswith("message") and len(header) == 4, header
    for line in lines[2:]:
        cells = split_row(line)
        assert len(cells) == 4, f"row does not have 4 cells: {line}"
        frags = re.findall(r"`([^`]+)`", cells[0])
        assert frags, f"first cell needs the message in backticks: {line}"
        rows.append((frags, line))
    return rows


# ---------------------------------------------------------------- reading the code


def _literal(node: ast.AST, names: dict[str, list[ast.AST]], depth: int = 0) -> list[str]:
    """The literal text pieces of a message expression; names assigned in the same function are followed."""
    if depth > 5:
        return []
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        out: list[str] = []
        for v in node.values:
            if isinstance(v, ast.FormattedValue) and isinstance(v.value, ast.Name) and v.value.id in names:
                out += ["\0"] + _literal(v.value, names, depth + 1)  # f"{head}, but ...": follow `head`
            else:
                out += _literal(v, names, depth + 1) if isinstance(v, ast.Constant) else ["\0"]
        return out
    if isinstance(node, ast.BinOp):
        return _literal(node.left, names, depth + 1) + ["\0"] + _literal(node.right, names, depth + 1)
    if isinstance(node, ast.IfExp):
        return _literal(node.body, names, depth + 1) + ["\0"] + _literal(node.orelse, names, depth + 1)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):  # "...".rstrip(": ") and the like
        return _literal(node.func.value, names, depth + 1)
    if isinstance(node, ast.Name):
        out = []
        for value in names.get(node.id, []):
            out += _literal(value, names, depth + 1) + ["\0"]
        return out
    return ["\0"]


def literal_text(node: ast.AST, names: dict[str, list[ast.AST]]) -> list[str]:
    """Contiguous literal runs of a message (placeholders split them)."""
    return [p for p in "".join(_literal(node, names)).split("\0") if p.strip()]


def passes_error_on(node: ast.AST) -> bool:
    """f"GPU{i}: {err}" / f"recipe: {f.recipe.error}": the text is another message (torch's, the loader's)."""
    return max((len(r) for r in literal_text(node, {})), default=0) < MIN_LITERAL and any(
        isinstance(v, ast.FormattedValue) and "err" in ast.unparse(v.value).lower() for v in ast.walk(node))


def failures() -> list[tuple[str, int, list[str]]]:
    """(file, line, literal runs) of every set-up failure message in FAILURE_SOURCES, except pass-throughs."""
    found = []
    for rel, call, status in FAILURE_SOURCES:
        tree = ast.parse((REPO / rel).read_text(encoding="utf-8"))
        for fn in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
            names: dict[str, list[ast.AST]] = {}
            for n in ast.walk(fn):
                if isinstance(n, ast.Assign):
                    for t in n.targets:
                        if isinstance(t, ast.Name):
                            names.setdefault(t.id, []).append(n.value)
            for n in ast.walk(fn):
                if not (isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == call):
                    continue
                if status is not None:
                    if len(n.args) < 3 or not (isinstance(n.args[1], ast.Name) and n.args[1].id == status):
                        continue
                    msg = n.args[2]
                else:
                    msg = n.args[0]
                if not passes_error_on(msg):
                    found.append((rel, n.lineno, literal_text(msg, names)))
    return found


def code_literals() -> list[str]:
    """Every string literal run in llamakit/*.py and every string in checks/*.yaml."""
    runs: list[str] = []
    for path in (REPO / "llamakit").rglob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for n in ast.walk(tree):
            if isinstance(n, (ast.Constant, ast.JoinedStr)) and not isinstance(getattr(n, "value", None), bytes):
                runs += literal_text(n, {})

    def strings(x: object) -> list[str]:
        if isinstance(x, str):
            return [x]
        if isinstance(x, dict):
            return [s for k, v in x.items() for s in strings(k) + strings(v)]
        if isinstance(x, list):
            return [s for v in x for s in strings(v)]
        return []

    for path in (REPO / "checks").glob("*.yaml"):
        runs += strings(yaml.safe_load(path.read_text(encoding="utf-8")))
    return runs


# ---------------------------------------------------------------- the troubleshooting table


def test_every_table_message_is_printed_by_llamakit():
    literals = code_literals()
    missing = [f for frags, _ in troubleshooting_rows() for f in frags if not any(f in lit for lit in literals)]
    assert not missing, f"docs/onboarding.md troubleshooting names messages llamakit no longer prints: {missing}"


def test_every_setup_failure_has_a_row():
    frags = [f for fs, _ in troubleshooting_rows() for f in fs]
    found = failures()
    assert len(found) > 20, "the failure finder found too few messages: did the code move?"
    uncovered = []
    for rel, line, runs in found:
        if not any(f in r for f in frags for r in runs):
            uncovered.append(f"{rel}:{line}: {' ... '.join(runs)}")
    assert not uncovered, "add a row to the troubleshooting table of docs/onboarding.md for:\n" + "\n".join(uncovered)


def test_the_problems_students_meet_most_have_a_row():
    text = "\n".join(row for _, row in troubleshooting_rows())
    missing = [name for name, key in NAMED_PROBLEMS.items() if key not in text]
    assert not missing, missing


def test_every_row_says_what_to_do():
    for _, row in troubleshooting_rows():
        assert len(split_row(row)[3]) > 5, row


# ---------------------------------------------------------------- the glossary comes from checks/explain.yaml


def test_glossary_block_is_generated_from_explain_yaml():
    from llamakit.glossary import glossary_markdown

    text = DOC.read_text(encoding="utf-8")
    m = re.search(r'<!-- glossary \(generated by `llamakit explain --markdown "([^"]+)"`.*?-->\n(.*?)<!-- /glossary -->',
                  text, flags=re.S)
    assert m, "the glossary block markers are missing"
    words = [w.strip() for w in m.group(1).split(",")]
    for w in ("MP", "world size", "rank", "data-parallel", "top_p", "temperature", "KV cache", "shard"):
        assert w in words, w
    assert m.group(2) == glossary_markdown(words), (
        "the glossary in docs/onboarding.md differs from checks/explain.yaml: regenerate it with "
        f"llamakit explain --markdown \"{m.group(1)}\"")


def test_explain_cli_lists_and_prints_and_suggests():
    from typer.testing import CliRunner

    from llamakit.cli import app
    from llamakit.explain import explain_term

    runner = CliRunner()
    listed = runner.invoke(app, ["explain"])
    assert listed.exit_code == 0 and "world_size" in listed.output and "multiple_of" in listed.output
    one = runner.invoke(app, ["explain", "World Size"])
    assert one.exit_code == 0 and explain_term("world_size").long.split()[0] in one.output
    key = runner.invoke(app, ["explain", "on_long_prompt"])
    assert key.exit_code == 0 and "truncate" in key.output
    bad = subprocess.run([sys.executable, "-m", "llamakit", "explain", "top-q"], capture_output=True, text=True,
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert bad.returncode == 2 and "top_p" in bad.stderr and "llamakit explain" in bad.stderr


# ---------------------------------------------------------------- the walk-through, as written


def walk_script() -> str:
    m = re.search(r"<!-- onboarding-walk:.*?-->\n```bash\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    assert m, "the walk-through block (marked <!-- onboarding-walk: ... -->) is missing"
    return m.group(1)


@pytest.mark.slow
def test_walkthrough_runs_as_written_to_a_complete_output(tmp_path):
    """The doc's laptop block, run as one bash script with `llamakit` = this checkout, ends in a checked file."""
    script = "set -euo pipefail\nllamakit() { \"$PY\" -m llamakit \"$@\"; }\n" + walk_script()
    env = {**os.environ, "PY": sys.executable, "PYTHONPATH": str(REPO), "LLAMAKIT_CACHE": str(tmp_path / "cache"),
           "COLUMNS": "200"}
    res = subprocess.run(["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    folder = tmp_path / "first-steps"
    log = (folder / "first.log").read_text(encoding="utf-8") if (folder / "first.log").exists() else ""
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:] + log[-3000:]
    prompts = [json.loads(line) for line in (folder / "my-prompts.jsonl").read_text(encoding="utf-8").splitlines()]
    rows = [json.loads(line) for line in (folder / "first.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [p["id"] for p in prompts]  # every id once, in input order
    for r, p in zip(rows, prompts):
        assert r["prompt"] == p["prompt"] and isinstance(r["completion"], str)
        assert r["finish_reason"] in ("stop", "length") and 0 < r["completion_tokens"] <= 32
        assert r["prompt_tokens"] > 1
    assert "wrote first.yaml" in res.stdout
    assert f"{len(prompts)} prompts, {len(prompts)} already in the output, 0 to generate" in res.stdout
