"""Decoding controls through `llamakit run` (torchrun + gloo on CPU): n samples per prompt resumed by (id, sample)
after kill -9 to the bit (batch_invariant), a grid of per-row settings in one prompt file, logprobs rows, stop
strings, validation with file:line, and the settings check on resume covering every key, per row."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from llamakit.errors import LlamakitError
from llamakit.run.plan import plan_run
from tests.test_run_e2e import _kill_everything, _start_until_rows, rows_of, run_cli

pytestmark = pytest.mark.slow

N = 12
GRID = [None, {"n": 1, "temperature": 0.0, "repetition_penalty": 1.3}, {"top_k": 5, "min_p": 0.05, "max_gen_len": 6},
        {"n": 2, "presence_penalty": 0.5, "frequency_penalty": 0.5}, {"stop": [" the", "."], "min_tokens": 2},
        {"n": 1, "logprobs": 3, "temperature": 0.0}]


def _line(i: int) -> str:
    row = {"id": f"q{i}", "prompt": ["The mayor said on Monday that", "Die Polizei teilte mit, dass"][i % 2]
           + f" ({i})"}
    if GRID[i % len(GRID)] is not None:
        row["params"] = GRID[i % len(GRID)]
    return json.dumps(row, ensure_ascii=False)


@pytest.fixture(scope="module")
def world(tiny_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("decoding")
    (root / "grid.jsonl").write_text("".join(_line(i) + "\n" for i in range(N)), encoding="utf-8")

    def recipe(name: str, **keys: object) -> Path:
        body = {"ckpt_dir": str(tiny_factory("llama2", 1)), "prompt_path": str(root / "grid.jsonl"),
                "out_path": str(root / f"{name}.jsonl"), "max_seq_len": 64, "max_gen_len": 10, "max_batch_size": 4,
                "temperature": 0.8, "n": 4, "device": "cpu", **keys}
        p = root / f"{name}.yaml"
        p.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items()), encoding="utf-8")
        return p

    return root, recipe


@pytest.fixture(scope="module")
def reference(world):
    root, recipe = world
    res = run_cli(root, str(recipe("ref")))
    assert res.returncode == 0, res.stderr + (root / "ref.log").read_text()
    return rows_of(root / "ref.jsonl")


def test_rows_carry_samples_settings_and_logprobs(world, reference):
    root, _ = world
    want = []
    for i in range(N):
        n = (GRID[i % len(GRID)] or {}).get("n", 4)
        want += [(f"q{i}", s) for s in range(n)]
    assert [(r["id"], r["sample"]) for r in reference] == want  # input order, then sample
    by = {(r["id"], r["sample"]): r for r in reference}
    assert len({by["q0", s]["completion"] for s in range(4)}) == 4  # n: 4 gives 4 different samples
    assert "params" not in by["q0", 0]  # the recipe's settings are not repeated in each row
    assert by["q1", 0]["params"] == {"n": 1, "temperature": 0.0, "repetition_penalty": 1.3}
    assert by["q2", 0]["params"] == {"top_k": 5, "min_p": 0.05, "max_gen_len": 6}
    assert all(by["q2", s]["completion_tokens"] <= 6 for s in range(4))
    lp = by["q5", 0]
    assert len(lp["token_ids"]) == len(lp["token_logprobs"]) == len(lp["token_ranks"]) == lp["completion_tokens"]
    assert all(len(t) == 3 and r >= 1 and v <= 0 for t, r, v in zip(lp["top_logprobs"], lp["token_ranks"],
                                                                    lp["token_logprobs"]))
    assert all(r == 1 for r in lp["token_ranks"])  # greedy, no penalty: every token is the most likely one
    for s in range(4):  # stop strings: the text ends before the first match, which is named
        r = by["q4", s]
        assert r["finish_reason"] in ("stop", "length")
        if r.get("stop_reason") in (" the", "."):
            assert r["stop_reason"] not in r["completion"]
    plan = json.loads((root / ".ref.jsonl.llamakit" / "plan.json").read_text())
    assert plan["sampling"]["n"] == 4 and set(plan["versions"]) >= {"llamakit", "torch", "cuda", "driver", "gpus"}
    assert plan["engine"]["graph_modes"] == ["sample", "full"]  # no plain greedy row


def test_mp2_gives_the_same_rows(world, reference, tiny_factory):
    root, recipe = world
    res = run_cli(root, str(recipe("mp2", ckpt_dir=str(tiny_factory("llama2", 2)))))
    assert res.returncode == 0, res.stderr + (root / "mp2.log").read_text()
    rows = rows_of(root / "mp2.jsonl")
    assert [(r["id"], r["sample"], r["completion"]) for r in rows] == \
        [(r["id"], r["sample"], r["completion"]) for r in reference]


def test_resume_refuses_changed_settings_recipe_or_row(world, reference):
    root, recipe = world
    res = run_cli(root, str(recipe("ref", top_k=40, stop=["\n"])))  # each changed key is named, in one line
    assert res.returncode == 2 and "top_k 0 -> 40" in res.stderr and "stop [] -> ['\\n']" in res.stderr
    assert res.stderr.strip().count("\n") == 0
    edited = root / "edited.jsonl"  # one row's own settings changed in the prompt file
    lines = (root / "grid.jsonl").read_text().splitlines()
    lines[2] = lines[2].replace('"top_k": 5', '"top_k": 7')
    edited.write_text("\n".join(lines) + "\n")
    (root / "ref-copy.jsonl").write_bytes((root / "ref.jsonl").read_bytes())
    with pytest.raises(LlamakitError) as e:
        plan_run(recipe("ref-copy", prompt_path=str(edited)), gpu_facts=([], False))
    assert "made with settings" in e.value.what and '"top_k": 5' in e.value.what and "line 3" in e.value.what


@pytest.mark.parametrize("params,message", [
    ({"top_k": -1}, "field 'params': key 'top_k': -1 is out of range"),
    ({"temprature": 0.5}, "unknown key 'temprature'"),
    ({"logprobs": 50}, "key 'logprobs': 50 is out of range"),
    ({"stop_token_ids": [99999]}, "id 99999 is not in the vocabulary"),
    ({"n": 3, "temperature": 0}, "3 identical greedy completions"),
    ({"min_tokens": 20}, "min_tokens': 20 is more than max_gen_len 10"),
    ("greedy", "field 'params' is str, not an object"),
])
def test_bad_row_settings_name_file_line_and_key(world, params, message):
    root, recipe = world
    bad = root / "bad-prompts.jsonl"
    bad.write_text(_line(0) + "\n" + json.dumps({"id": "x", "prompt": "Hallo", "params": params}) + "\n")
    with pytest.raises(LlamakitError) as e:
        plan_run(recipe("bad", prompt_path=str(bad)), gpu_facts=([], False))
    assert e.value.where == str(bad) and e.value.line == 2 and message in e.value.what, e.value.one_line()


def test_bad_recipe_keys_name_their_line(world):
    root, recipe = world
    with pytest.raises(LlamakitError) as e:
        plan_run(recipe("badr", n=2, temperature=0), gpu_facts=([], False))
    assert e.value.line == 8 and "identical greedy" in e.value.what  # the line of n
    with pytest.raises(LlamakitError) as e:
        plan_run(recipe("badr", repetition_penalty="1.2"), gpu_facts=([], False))
    assert "key 'repetition_penalty': expected a number" in e.value.what and e.value.line == 10


def test_kill_9_then_resume_at_another_batch_gives_the_same_samples_to_the_bit(world):
    """n samples per prompt resumed by (id, sample) after kill -9, with `batch_invariant: true`: the rows of a run at
    max_batch_size 1 and of one at 8 that is killed with SIGKILL and resumed at 3 are identical, logprob floats
    included (no tolerance)."""
    root, recipe = world
    alone = run_cli(root, str(recipe("inv1", batch_invariant=True, max_batch_size=1)))
    assert alone.returncode == 0, alone.stderr + (root / "inv1.log").read_text()
    r = recipe("inv8", batch_invariant=True, max_batch_size=8)
    out = root / "inv8.jsonl"
    proc = _start_until_rows(root, r, out, subprocess.DEVNULL, rows=6)
    _kill_everything(proc)
    res = run_cli(root, str(r), "--set", "max_batch_size=3")
    assert res.returncode == 0, res.stderr + (root / "inv8.log").read_text()
    assert "were already in the output (resumed)" in res.stdout
    want = rows_of(root / "inv1.jsonl")
    assert rows_of(out) == want and any("token_logprobs" in row for row in want)
