"""`llamakit new-recipe`: values sized from prompts and GPU memory, every key commented, and the file runs as written."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from llamakit.checkpoint.params import PRESETS, PRESET_MP, identify
from llamakit.errors import LlamakitError
from llamakit.explain import explain_term
from llamakit.gpus import GpuInfo
from llamakit.memory import GiB, plan_memory
from llamakit.run.recipe_writer import (BATCH_CAP, CPU_BATCH, HEADROOM, SEQ_STEP, choose_size, parse_gpus, plan_recipe,
                                    write_new_recipe)
from llamakit.run.plan import plan_run
from llamakit.run.recipe import KEYS, load_recipe

REPO = Path(__file__).resolve().parents[1]
A6000 = GpuInfo(0, "NVIDIA RTX A6000", int(47.99 * GiB), int(47.5 * GiB), (8, 6))
SERVER = ([A6000, GpuInfo(1, "NVIDIA RTX A6000", int(47.99 * GiB), int(47.5 * GiB), (8, 6))], True)
NO_GPU: tuple[list[GpuInfo], bool] = ([], False)


def size(preset: str, mp: int | None = None, lengths: list[int] | None = None, gen: int = 256, gpus: str = "2x48"):
    cfg = PRESETS[preset]
    return choose_size(cfg, 32000, mp or PRESET_MP[preset], identify(cfg), lengths or [40, 700, 300] * 100, gen,
                       parse_gpus(gpus), Path(f"/data/LLaMA/{preset}"))


# ---------------------------------------------------------------- sizing (pure)


@pytest.mark.parametrize("preset, mp, dp, quantize", [("llama-7b", 1, 2, "none"), ("llama-13b", 2, 1, "none"),
                                                      ("llama-30b", 2, 1, "none"), ("llama-65b", 2, 1, "int8")])
def test_batch_is_the_largest_that_fits_the_two_a6000(preset, mp, dp, quantize):
    s = size(preset, mp)
    assert (s.dp, s.quantize, s.device) == (dp, quantize, "cuda")
    dtype = "int8" if quantize == "int8" else "bf16"
    budget = 48 * GiB * HEADROOM
    assert plan_memory(PRESETS[preset], 32000, mp, dtype, s.max_batch_size, s.max_seq_len).total <= budget
    if s.max_batch_size < BATCH_CAP:  # one more sequence would not fit
        assert plan_memory(PRESETS[preset], 32000, mp, dtype, s.max_batch_size + 1, s.max_seq_len).total > budget


def test_max_seq_len_is_longest_prompt_plus_generation_rounded_up():
    s = size("llama-13b", lengths=[12, 300, 77], gen=100)
    assert s.max_seq_len % SEQ_STEP == 0 and 400 <= s.max_seq_len < 400 + SEQ_STEP
    assert s.on_long_prompt == "error" and s.n_long == 0


def test_prompts_beyond_the_trained_context_are_truncated_with_a_note():
    s = size("llama-13b", lengths=[100, 1900, 2100], gen=256)  # LLaMA-1: trained on 2048 tokens
    assert (s.max_seq_len, s.on_long_prompt, s.n_long) == (2048, "truncate", 2)
    assert any("truncate" in n for n in s.notes)


def test_batch_is_not_larger_than_the_prompts_each_copy_gets():
    assert size("llama-7b", lengths=[50] * 5).max_batch_size == 3  # 5 prompts over 2 copies


def test_more_shards_than_gpus_says_how_to_reshard():
    with pytest.raises(LlamakitError) as e:
        size("llama-65b")  # MP=8 on 2 GPUs
    assert "llamakit reshard /data/LLaMA/llama-65b" in e.value.fix and "--mp 2" in e.value.fix


def test_no_gpu_gives_a_small_cpu_batch_and_warns_for_big_models():
    s = size("llama-13b", gpus="cpu")
    assert (s.device, s.dp, s.max_batch_size) == ("cpu", 1, CPU_BATCH)
    assert any("GPU server" in n for n in s.notes)


@pytest.mark.parametrize("spec, n, total", [("2x48", 2, 48 * GiB), ("1x80GB", 1, 80 * GiB), ("cpu", 0, 0)])
def test_gpus_can_be_described_for_another_machine(spec, n, total):
    t = parse_gpus(spec, gpu_facts=NO_GPU)
    assert len(t.gpus) == n and all(g.total_bytes == total for g in t.gpus)


def test_gpus_found_here_and_bad_specs():
    assert len(parse_gpus("auto", SERVER).gpus) == 2 and len(parse_gpus("1", SERVER).gpus) == 1
    for bad in ("3", "lots"):
        with pytest.raises(LlamakitError):
            parse_gpus(bad, SERVER)


# ---------------------------------------------------------------- the written file


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLAMAKIT_CACHE", str(tmp_path / "cache"))
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"id": f"x{i}", "prompt": f"Die Stadt hat {i} neue"}) + "\n"
                                              for i in range(6)), encoding="utf-8")
    return tmp_path


def test_written_recipe_validates_and_plans_as_written(folder):
    path, plan, text = write_new_recipe("r.yaml", "builtin:demo", "p.jsonl", max_gen_len=16, gpu_facts=NO_GPU)
    lr = load_recipe(path)  # the run's own loader
    r = lr.recipe
    assert (r.ckpt_dir, r.prompt_path, r.out_path, r.max_gen_len) == ("builtin:demo", "p.jsonl", "r.jsonl", 16)
    assert r.max_seq_len >= plan.longest + 16 and r.max_batch_size == 6 and r.device == "auto"
    setup = plan_run(path, gpu_facts=NO_GPU)
    assert setup.plan.pending == 6 and setup.plan.device == "cpu"


def test_every_key_is_written_with_a_comment_from_the_glossary_where_one_exists(folder):
    _, _, text = write_new_recipe("r.yaml", "builtin:demo", "p.jsonl", gpu_facts=NO_GPU)
    raw = yaml.safe_load(text)
    # left out: the demo's own tokenizer is used, and the log follows out_path (also under --out)
    assert set(raw) == set(KEYS) - {"tokenizer_path", "logging_path"}
    assert re.search(r"^# tokenizer_path: ", text, flags=re.M) and re.search(r"^# logging_path: ", text, flags=re.M)
    lines = text.splitlines()
    for key in KEYS:
        i = next(i for i, ln in enumerate(lines) if re.match(rf"^(# )?{key}: ", ln))
        assert lines[i - 1].startswith("# "), f"{key} has no comment"
    for key in ("max_seq_len", "max_batch_size", "temperature", "top_p", "quantize"):
        short = explain_term(key).short
        assert f"# {short[:1].upper()}{short[1:]}." in text, key


def test_gpu_sized_recipe_plans_on_the_gpus(folder):
    path, plan, text = write_new_recipe("g.yaml", "builtin:demo", "p.jsonl", gpu_facts=SERVER)
    assert plan.device == "cuda" and plan.dp == 2 and plan.max_batch_size == 3  # 6 prompts over 2 copies
    assert "Per GPU: weights" in text
    setup = plan_run(path, gpu_facts=SERVER)
    assert (setup.plan.device, setup.plan.mp, setup.plan.dp, setup.plan.dtype) == ("cuda", 1, 2, "bf16")


def test_never_overwrites_and_wants_a_yaml_name(folder):
    (folder / "keep.yaml").write_text("mine\n", encoding="utf-8")
    with pytest.raises(LlamakitError, match="already exists"):
        write_new_recipe("keep.yaml", "builtin:demo", "p.jsonl", gpu_facts=NO_GPU)
    assert (folder / "keep.yaml").read_text(encoding="utf-8") == "mine\n"
    with pytest.raises(LlamakitError, match="must end in .yaml"):
        write_new_recipe("out.jsonl", "builtin:demo", "p.jsonl", gpu_facts=NO_GPU)


def test_bad_prompt_file_is_named_with_its_line(folder):
    (folder / "bad.jsonl").write_text('{"id": 1, "prompt": "ok"}\n{"id": 2}\n', encoding="utf-8")
    with pytest.raises(LlamakitError) as e:
        plan_recipe("builtin:demo", "bad.jsonl", "b.yaml", gpu_facts=NO_GPU)
    assert e.value.line == 2 and "prompt" in e.value.what


def test_cli_prints_what_it_chose_and_the_next_command(folder):
    from llamakit.cli import app

    res = CliRunner().invoke(app, ["new-recipe", "builtin:demo", "p.jsonl", "c.yaml", "--gpus", "cpu",
                                   "--max-gen-len", "8", "--out", "data/c-out.jsonl"])
    assert res.exit_code == 0, res.output
    assert "wrote c.yaml" in res.output and "next: llamakit run c.yaml --dry-run" in res.output
    assert yaml.safe_load((folder / "c.yaml").read_text(encoding="utf-8"))["out_path"] == "data/c-out.jsonl"


@pytest.mark.slow
def test_new_recipe_output_runs_as_written(tmp_path):
    """new-recipe (CLI) on a .txt prompt file -> `llamakit run` in a subprocess -> every id once, fields present."""
    (tmp_path / "leads.txt").write_text("Der Bürgermeister sagte, dass\n\nThe storm hit the coast and\n"
                                        "Die Schule bleibt geschlossen, weil\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLAMAKIT_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "llamakit", *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=240)

    made = cli("new-recipe", "builtin:demo", "leads.txt", "leads.yaml", "--max-gen-len", "6", "--out", "out/leads.jsonl")
    assert made.returncode == 0, made.stderr
    ran = cli("run", "leads.yaml")
    assert ran.returncode == 0, ran.stdout + ran.stderr
    rows = [json.loads(line) for line in (tmp_path / "out" / "leads.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [1, 3, 4]  # .txt: the id is the line number; the blank line is skipped
    for r in rows:
        assert {"id", "prompt", "completion", "prompt_tokens", "completion_tokens", "finish_reason"} <= set(r)
        assert 0 < r["completion_tokens"] <= 6


def test_recipe_named_like_the_prompt_file_never_writes_over_it(folder):
    """`new-recipe builtin:demo p.jsonl p.yaml` is a natural choice; the output must not be p.jsonl."""
    path, plan, _ = write_new_recipe("p.yaml", "builtin:demo", "p.jsonl", gpu_facts=NO_GPU)
    assert plan.out_value == "p-out.jsonl" and plan.log_value == "p-out.log"
    assert plan_run(path, gpu_facts=NO_GPU).plan.pending == 6  # and the recipe runs
