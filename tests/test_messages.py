"""Messages a new user met that said the wrong thing (issue #14), each pinned: who is blamed, which recipe line,
what fix is proposed, plurals, help screens, exit codes, the demo's closing lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamakit.errors import LlamakitError
from llamakit.run.plan import describe, plan_run
from llamakit.run.recipe import find_recipe

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def folder(tmp_path, tiny_factory):
    (tmp_path / "p.jsonl").write_text('{"id": 1, "prompt": "Hallo Welt"}\n', encoding="utf-8")

    def recipe(**keys: object) -> Path:
        body = {"ckpt_dir": str(tiny_factory("llama2", 2)), "prompt_path": str(tmp_path / "p.jsonl"),
                "out_path": str(tmp_path / "o.jsonl"), "device": "cpu", **keys}
        p = tmp_path / "r.yaml"
        p.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items()), encoding="utf-8")
        return p

    return tmp_path, recipe


def fails(*args, **kw) -> LlamakitError:
    with pytest.raises(LlamakitError) as e:
        plan_run(*args, gpu_facts=([], False), **kw)
    return e.value


def test_nproc_errors_blame_the_flag_or_the_nproc_line_not_the_device_line(folder):
    root, recipe = folder
    e = fails(recipe(), flags={"--nproc": ("nproc", 3)})
    assert e.where == "--nproc 3" and "not a multiple of the checkpoint's MP=2" in e.what
    assert e.fix.startswith("use --nproc auto or a multiple of 2")
    e = fails(recipe(nproc=3))  # keys: ckpt_dir, prompt_path, out_path, device, nproc -> line 5
    assert (e.where, e.fix) == (f"{root / 'r.yaml'}:5", "use nproc: auto or a multiple of 2")


def test_path_errors_name_the_recipe_line_that_set_the_path(folder):
    root, recipe = folder
    e = fails(recipe(ckpt_dir=str(root / "models" / "13b")))
    assert (e.where, e.line) == (str(root / "r.yaml"), 1)
    assert e.what == f"ckpt_dir {root / 'models' / '13b'}: checkpoint folder does not exist"
    assert str(root / "models" / "13b") not in e.fix  # never the same missing path as the fix
    e = fails(recipe(prompt_path=str(root / "nope.jsonl")))
    assert e.line == 2 and e.what.startswith("prompt_path ") and "prompt file does not exist" in e.what
    e = fails(recipe(tokenizer_path=str(root)))  # a folder, not a file
    assert e.line == 5 and e.what == f"tokenizer_path {root}: tokenizer path is a folder, not a tokenizer file"
    (root / "bad.jsonl").write_text("{not json\n", encoding="utf-8")
    e = fails(recipe(prompt_path=str(root / "bad.jsonl")))  # inside the file: its own file and line
    assert (e.where, e.line) == (str(root / "bad.jsonl"), 1)


def test_missing_checkpoint_fix_names_the_checkpoints_next_to_it(folder, tiny_factory):
    root, recipe = folder
    (root / "models").mkdir()
    os.symlink(tiny_factory("llama2", 2), root / "models" / "13B")
    e = fails(recipe(ckpt_dir=str(root / "models" / "13b")))
    assert e.fix == f"checkpoints in {root / 'models'}: 13B; use one of them"


@pytest.mark.skipif(Path("/data/LLaMA").exists(), reason="the shipped recipe's models are here")
def test_the_shipped_13b_recipe_elsewhere_does_not_propose_its_own_missing_path():
    e = fails("zeitonline-13b")
    assert e.what == "ckpt_dir /data/LLaMA/13B: checkpoint folder does not exist" and e.line is not None
    assert "/data/LLaMA/13B" not in e.fix and "llamakit run demo" in e.fix


def test_a_shipped_recipe_path_outside_the_checkout_names_the_shipped_recipes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(LlamakitError) as e:
        find_recipe("recipes/demo.yaml")
    assert "`llamakit run demo` runs it from anywhere" in e.value.fix and "shipped recipes: demo" in e.value.fix
    with pytest.raises(LlamakitError) as e:
        find_recipe("recipes/mine.yaml")
    assert "shipped recipes (run them by name from anywhere" in e.value.fix


def test_inspect_of_an_mp2_checkpoint_says_one_gpu_is_after_a_reshard(tiny_factory):
    from llamakit.inspection import fit_summary, inspect_checkpoint

    mem = inspect_checkpoint(tiny_factory("llama2", 2), gpus=[]).memory
    assert mem.mp == 2
    summary = fit_summary(mem.options, mem.dtype, mem.mp)
    assert summary.startswith("needs 1 GPU with ") and summary.endswith("after a reshard to MP=1")
    assert "reshard" not in fit_summary(mem.options, mem.dtype, 1)


def test_plurals_in_the_plan(folder):
    _, recipe = folder
    setup = plan_run(recipe(), gpu_facts=([], False))
    one = replace(setup.plan, mp=1, dp=1, omp_threads=1)
    lines = "\n".join(describe(one, setup.argv))
    assert "= 1 process, backend" in lines and "(1 thread per process)" in lines
    assert "1 processes" not in lines and "1 threads" not in lines


def test_no_help_screen_shows_bool_placeholders():
    from llamakit.cli import app

    runner = CliRunner()
    names = [c.name or c.callback.__name__ for c in app.registered_commands]
    assert "status" in names
    for args in [[], *([n] for n in names)]:
        res = runner.invoke(app, [*args, "--help"], env={"COLUMNS": "160"})
        assert res.exit_code == 0, (args, res.output)
        assert "<bool>" not in res.output, (args, res.output)


def test_reshard_errors_are_one_line_without_a_leading_empty_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "llamakit", "reshard", str(tmp_path / "nope"), str(tmp_path / "x"),
                          "--mp", "2"], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
                         timeout=120)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and res.stderr.count("\n") == 1, res.stderr
