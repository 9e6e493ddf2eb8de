"""`llamakit inspect` on the command line: tables, --explain, --json round trip, one line per problem, exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llamakit.cli import app
from llamakit.errors import LlamakitError
from llamakit.inspection import InspectReport, inspect_checkpoint

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def no_gpus(monkeypatch):
    """The CLI detects GPUs via NVML; pin 'none' so the output does not depend on the test machine."""
    monkeypatch.setattr("llamakit.inspection.folder.detect_gpus", lambda: [])


def invoke(*args: str):
    return CliRunner().invoke(app, ["inspect", *map(str, args)], catch_exceptions=False)


def test_report_shows_params_meanings_counts_and_plan(tiny_factory):
    res = invoke(tiny_factory("llama2", 2), "--batch", "2", "--seq", "8")
    assert res.exit_code == 0, res.output
    out = res.stdout
    assert "width of the vector that represents each token" in out  # dim's meaning from checks/explain.yaml
    assert "172,352" in out and "MP 2" in out and "--nproc" not in out  # no GPUs: no run advice
    assert "consolidated.01.pth" in out and "match params.json" in out
    assert "512 tokens = embedding rows" in out
    assert "KV cache 4.00 KiB" not in out and "needs 1 GPU with 0.8 GiB free at bf16" in out
    assert res.stderr == ""


def test_explain_prints_the_onboarding_text(tiny_factory):
    res = invoke(tiny_factory("llama2-gqa", 1), "--explain")
    assert res.exit_code == 0
    assert "A common misreading" in res.stdout and "grouped-query attention" in res.stdout


def test_json_is_one_object_equal_to_the_library_report(tiny_factory):
    ckpt = tiny_factory("llama1", 4)
    res = invoke(ckpt, "--json", "--batch", "3", "--seq", "64", "--dtype", "fp16")
    assert res.exit_code == 0
    cli = InspectReport.from_json(res.stdout)
    lib = inspect_checkpoint(ckpt, dtype="fp16", batch=3, seq=64, gpus=[])
    cli.seconds = lib.seconds = 0.0
    assert cli == lib
    assert json.loads(res.stdout)["memory"]["batch"] == 3


def test_damage_is_one_line_each_exit_2_and_the_report_still_printed(tiny_copy):
    ckpt = tiny_copy("llama2", 2)
    shard = ckpt / "consolidated.01.pth"
    shard.write_bytes(shard.read_bytes()[:1000])
    (ckpt / "params.json").write_text('{"dim": 64, "n_layers": 2, "n_heads": 4, "multiple_of": 256, '
                                      '"norm_eps": 1e-05, "vocab_size": 512}')
    res = invoke(ckpt)
    assert res.exit_code == 2  # as run and new-recipe exit for the same problems
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: ") for line in lines)
    assert "consolidated.01.pth: cannot read shard" in res.stderr and "Fix: " in lines[0]
    assert "params.json implies" in res.stderr
    assert "params.json" in res.stdout and "unreadable" in res.stdout  # the rest of the report is there


def test_verify_md5_mismatch_exits_2(tiny_copy):
    ckpt = tiny_copy("llama2", 1)
    shard = ckpt / "consolidated.00.pth"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    assert invoke(ckpt).exit_code == 0
    res = invoke(ckpt, "--verify")
    assert res.exit_code == 2 and "md5 differs from checklist.chk" in res.stderr
    assert "md5 differs: consolidated.00.pth" in res.stdout


def test_hf_folder_is_named(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"x")
    res = invoke(tmp_path, "--json")
    assert res.exit_code == 2 and "Hugging Face" in res.stderr
    assert json.loads(res.stdout)["problems"][0]["code"] == "hf-checkpoint"


def test_recipe_gives_batch_seq_and_checkpoint(tiny_factory, tmp_path):
    pytest.importorskip("llamakit.run.recipe", reason="the run engineer's recipe module has not landed")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"ckpt_dir: {tiny_factory('llama2', 1)}\nprompt_path: p.jsonl\nout_path: o.jsonl\n"
                      "max_batch_size: 3\nmax_seq_len: 64\nmax_gen_len: 16\nquantize: int8\n")
    res = invoke("--recipe", recipe, "--json")
    assert res.exit_code == 0, res.output
    mem = json.loads(res.stdout)["memory"]
    assert (mem["batch"], mem["seq"], mem["dtype"]) == (3, 64, "int8")
    res = invoke("--recipe", recipe, "--json", "--batch", "5")  # a flag beats the recipe
    assert json.loads(res.stdout)["memory"]["batch"] == 5


def test_bad_option_is_a_clean_error(tiny_factory):
    from llamakit.errors import LlamakitError

    with pytest.raises(LlamakitError, match="unknown dtype 'fp8'"):  # main() turns it into one line, exit 2
        invoke(tiny_factory("llama2", 1), "--dtype", "fp8")


def test_real_process_exit_code_and_clean_error(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "llamakit", "inspect", str(tmp_path / "missing")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing'}: checkpoint folder does not exist. Fix: no checkpoint in {tmp_path}: give "
        "the folder holding consolidated.NN.pth and params.json"]


def test_cli_help_defaults_equal_the_library_defaults():
    import llamakit.cli.cmd_inspect as cli
    import llamakit.inspection as lib

    assert (cli.DEFAULT_BATCH, cli.DEFAULT_SEQ, cli.DEFAULT_DTYPE) == (lib.DEFAULT_BATCH, lib.DEFAULT_SEQ,
                                                                       lib.DEFAULT_DTYPE)


def test_help_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, llamakit.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_builtin_demo_can_be_inspected_like_in_recipes():
    r = invoke("builtin:demo")
    assert r.exit_code == 0 and "llamakit/assets/demo" in r.output.replace("\\", "/")
    with pytest.raises(LlamakitError, match="unknown built-in"):  # main() turns it into one line, exit 2
        invoke("builtin:nope")
