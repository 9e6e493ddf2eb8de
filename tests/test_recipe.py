"""Recipes: shipped ones validate; every wrong key, type or value is one line with recipe:line, key and what is allowed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from llamakit.data import data_dir
from llamakit.errors import LlamakitError
from llamakit.run.recipe import KEYS, Recipe, find_recipe, load_recipe, resolve_paths

BASE = "ckpt_dir: /data/LLaMA/13B\nprompt_path: p.jsonl\nout_path: out.jsonl\n"


def recipe_file(tmp_path: Path, text: str, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def error_of(path: Path, overrides: list[str] | None = None) -> LlamakitError:
    with pytest.raises(LlamakitError) as e:
        load_recipe(path, overrides)
    assert "\n" not in e.value.one_line()
    return e.value


def test_shipped_recipes_validate_and_zeitonline_matches_the_seed_run():
    demo = load_recipe(data_dir("recipes") / "demo.yaml").recipe
    assert demo.ckpt_dir == "builtin:demo" and demo.prompt_path == "builtin:demo-prompts.jsonl"
    assert demo.out_path == "demo-output.jsonl" and demo.temperature == 0
    z = load_recipe(data_dir("recipes") / "zeitonline-13b.yaml").recipe
    assert (z.ckpt_dir, z.tokenizer_path, z.prompt_path, z.out_path, z.logging_path) == (
        "/data/LLaMA/13B", "/data/LLaMA/tokenizer.model", "prompts/prompts_zeitonline.jsonl",
        "llama_generated_from_zeitonline.jsonl", "zeitonline.log")
    assert (z.max_seq_len, z.max_gen_len, z.max_batch_size, z.temperature, z.top_p, z.seed) == (
        1024, 256, 32, 0.8, 0.95, 1)


def test_every_key_of_the_shipped_recipes_has_a_comment():
    for name in ("demo.yaml", "zeitonline-13b.yaml"):
        for line in (data_dir("recipes") / name).read_text().splitlines():
            if re.match(r"^[a-z_]+:", line):
                assert "#" in line, f"{name}: uncommented key line {line!r}"


def test_bare_name_finds_a_shipped_recipe_and_unknown_names_list_them(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert find_recipe("demo") == (data_dir("recipes") / "demo.yaml").resolve()
    with pytest.raises(LlamakitError) as e:
        find_recipe("dmeo")
    assert str(tmp_path / "dmeo") in e.value.one_line() and "demo" in e.value.fix


def test_typo_key_names_the_line_and_suggests_the_key(tmp_path):
    p = recipe_file(tmp_path, BASE + "max_batch_size: 4\ntempreature: 0.7\n")
    e = error_of(p)
    assert e.one_line().startswith(f"{p}:5: unknown key 'tempreature'") and "did you mean 'temperature'" in e.fix


@pytest.mark.parametrize("line, words, allowed", [
    ("max_batch_size: eight", "expected an integer, got 'eight'", "1 to 4096"),
    ("max_batch_size: 0", "0 is out of range", "1 to 4096"),
    ("max_seq_len: 1024.5", "expected a whole number, got 1024.5", "8 to 1048576"),
    ("top_p: 1.5", "1.5 is out of range", "> 0 and <= 1"),
    ("temperature: -0.1", "out of range", "0 to 10"),
    ("temperature: '0.7'", "expected a number, got '0.7'", "0 to 10"),
    ("dtype: bfloat16", "'bfloat16' is not allowed", "auto, bf16, fp16, fp32"),
    ("device: gpu", "'gpu' is not allowed", "auto, cuda, cpu"),
    ("nproc: two", "'two' is not allowed", "auto or a positive multiple"),
    ("nproc: 0", "out of range", "auto or a positive multiple"),
    ("on_long_prompt: cut", "'cut' is not allowed", "error, truncate"),
    ("fast: maybe", "expected true or false", "true or false"),
    ("seed: -1", "out of range", ">= 0"),
    ("prompt_field: ''", "is empty", "field name"),
])
def test_bad_value_names_line_key_and_what_is_allowed(tmp_path, line, words, allowed):
    p = recipe_file(tmp_path, BASE + line + "\n")
    e = error_of(p)
    key = line.split(":")[0]
    assert e.one_line().startswith(f"{p}:4: key '{key}': ") and words in e.what and allowed in e.fix


def test_missing_key_and_gen_len_too_long(tmp_path):
    e = error_of(recipe_file(tmp_path, "ckpt_dir: x\nout_path: o.jsonl\n"))
    assert "key 'prompt_path' is missing" in e.what and "add `prompt_path:" in e.fix
    e = error_of(recipe_file(tmp_path, BASE + "max_seq_len: 256\nmax_gen_len: 256\n"))
    assert e.line == 5 and "max_gen_len" in e.what and "smaller than max_seq_len" in e.fix


def test_yaml_syntax_duplicates_and_non_mappings(tmp_path):
    e = error_of(recipe_file(tmp_path, BASE + "top_p: [0.9\n"))
    assert "not valid YAML" in e.what and e.line is not None
    e = error_of(recipe_file(tmp_path, BASE + "seed: 1\nseed: 2\n"))
    assert e.line == 5 and "appears twice (first on line 4)" in e.what
    assert "mapping" in error_of(recipe_file(tmp_path, "- a\n- b\n")).what
    assert "empty" in error_of(recipe_file(tmp_path, "# nothing\n")).what


def test_set_overrides_win_and_their_errors_name_the_flag(tmp_path):
    p = recipe_file(tmp_path, BASE + "max_batch_size: 4\n")
    lr = load_recipe(p, ["max_batch_size=16", "temperature=0", "fast=false", "tokenizer_path=/t/tok.model"])
    r = lr.recipe
    assert (r.max_batch_size, r.temperature, r.fast, r.tokenizer_path) == (16, 0.0, False, "/t/tok.model")
    assert lr.describe("max_batch_size") == "--set max_batch_size=16"
    e = error_of(p, ["max_batch_size=lots"])
    assert e.one_line().startswith("--set max_batch_size=lots: key 'max_batch_size'")
    assert "did you mean 'top_p'" in error_of(p, ["topp=0.5"]).fix
    assert "key=value" in error_of(p, ["temperature"]).what
    lr = load_recipe(p, flags={"--out": ("out_path", "other.jsonl"), "--nproc": ("nproc", None)})
    assert lr.recipe.out_path == "other.jsonl" and lr.recipe.nproc == "auto"


def test_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    sub = tmp_path / "recipes"
    sub.mkdir()
    p = recipe_file(sub, BASE.replace("/data/LLaMA/13B", "models/13B"))
    monkeypatch.chdir(tmp_path)
    paths = resolve_paths(load_recipe(p))
    assert paths.ckpt_dir == tmp_path / "models/13B" and paths.prompt_path == tmp_path / "p.jsonl"
    assert paths.out_path == tmp_path / "out.jsonl" and paths.log_path == tmp_path / "out.log"
    assert paths.run_dir == tmp_path / ".out.jsonl.llamakit" and paths.tokenizer_path is None


def test_builtin_prompts_and_unknown_builtins(tmp_path):
    p = recipe_file(tmp_path, BASE.replace("p.jsonl", "builtin:demo-prompts.jsonl"))
    assert resolve_paths(load_recipe(p)).prompt_path.name == "demo-prompts.jsonl"
    p = recipe_file(tmp_path, BASE.replace("p.jsonl", "builtin:nope.jsonl"))
    with pytest.raises(LlamakitError) as e:
        resolve_paths(load_recipe(p))
    assert e.value.line == 2 and "builtin:demo-prompts.jsonl" in e.value.fix


def test_builtin_demo_model_is_built_once_into_the_cache(tmp_path, monkeypatch):
    # the fallback when the trained demo model is not shipped (llamakit/assets/demo/ missing)
    monkeypatch.setattr("llamakit.run.recipe.asset_path", lambda name: tmp_path / "no-assets" / name)
    monkeypatch.setenv("LLAMAKIT_CACHE", str(tmp_path / "cache"))
    p = recipe_file(tmp_path, BASE.replace("/data/LLaMA/13B", "builtin:demo"))
    first = resolve_paths(load_recipe(p)).ckpt_dir
    assert first.parent == tmp_path / "cache" and (first / "params.json").is_file()
    assert (first / "tokenizer.model").is_file() and (first / "consolidated.00.pth").is_file()
    stamp = (first / "params.json").stat().st_mtime_ns
    assert resolve_paths(load_recipe(p)).ckpt_dir == first and (first / "params.json").stat().st_mtime_ns == stamp
    assert [c.name for c in (tmp_path / "cache").iterdir()] == [first.name]  # no temp folders left


def test_docs_table_lists_every_key():
    doc = (Path(__file__).resolve().parents[1] / "docs" / "run.md").read_text(encoding="utf-8")
    for key in KEYS:
        assert f"`{key}`" in doc, key
    assert set(KEYS) == set(Recipe.model_fields)


def test_output_that_would_overwrite_the_prompts_or_a_folder_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    p = recipe_file(tmp_path, BASE.replace("out.jsonl", "p.jsonl"))
    with pytest.raises(LlamakitError) as e:
        resolve_paths(load_recipe(p))
    assert e.value.line == 3 and "same file as prompt_path" in e.value.what
    (tmp_path / "outdir").mkdir()
    p = recipe_file(tmp_path, BASE.replace("out.jsonl", "outdir"))
    with pytest.raises(LlamakitError, match="is a folder"):
        resolve_paths(load_recipe(p))
    p = recipe_file(tmp_path, BASE + "logging_path: out.jsonl\n")
    with pytest.raises(LlamakitError, match="'logging_path' is the same file as out_path"):
        resolve_paths(load_recipe(p))


def test_builtin_demo_is_the_shipped_trained_model(tmp_path):
    p = recipe_file(tmp_path, BASE.replace("/data/LLaMA/13B", "builtin:demo"))
    ckpt = resolve_paths(load_recipe(p)).ckpt_dir
    assert ckpt.name == "demo" and ckpt.parent.name == "assets" and (ckpt / "consolidated.00.pth").is_file()
