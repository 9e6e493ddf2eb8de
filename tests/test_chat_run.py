"""`llamakit run` with chat prompts on a Llama 3 style checkpoint: the recipe's chat_format and a row's own, message
lists checked before anything starts (file:line), the token ids of Meta's format fed to the model, rows as written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamakit.chat import encode_prompt
from llamakit.errors import LlamakitError
from llamakit.run.plan import plan_run
from llamakit.tokenizer import Tokenizer

REPO = Path(__file__).resolve().parents[1]
ROWS = [
    {"id": "a", "prompt": "Write one sentence about the railway."},
    {"id": "b", "prompt": [{"role": "system", "content": "You write news."},
                           {"role": "user", "content": "The city council met on Monday"}]},
    {"id": "c", "prompt": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                           {"role": "user", "content": "Tell me about the bakery."}]},
    {"id": "d", "prompt": "Der Stadtrat hat am Montagabend", "params": {"chat_format": "none"}},
]


def _write(folder: Path, ckpt: Path, rows: list[dict], **keys: object) -> Path:
    (folder / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    body = {"ckpt_dir": str(ckpt), "prompt_path": str(folder / "chat.jsonl"), "out_path": str(folder / "out.jsonl"),
            "max_seq_len": 96, "max_gen_len": 8, "max_batch_size": 4, "device": "cpu",
            "chat_format": "llama3-instruct", **keys}
    recipe = folder / "chat.yaml"
    recipe.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items()), encoding="utf-8")
    return recipe


@pytest.mark.slow
def test_chat_run_feeds_meta_token_ids_and_writes_rows_as_given(tiny_factory, tmp_path):
    ckpt = tiny_factory("llama3", 2)  # MP 2: the vocab-parallel embedding through the real run path
    recipe = _write(tmp_path, ckpt, ROWS)
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    res = subprocess.run([sys.executable, "-m", "llamakit", "run", str(recipe)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr + (tmp_path / "out.log").read_text()
    rows = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text(encoding="utf-8").splitlines()]
    tok = Tokenizer(ckpt / "tokenizer.model")
    for given, row in zip(ROWS, rows):
        fmt = given.get("params", {}).get("chat_format", "llama3-instruct")
        assert row["id"] == given["id"] and row["prompt"] == given["prompt"]
        assert row["prompt_tokens"] == len(encode_prompt(tok, fmt, given["prompt"]))
        assert row["finish_reason"] in ("stop", "length") and row["completion_tokens"] <= 8
        assert bool(row["completion"]) == (row["completion_tokens"] > 0)  # text of the answer only, never cut
    assert json.loads((tmp_path / ".out.jsonl.llamakit" / "plan.json").read_text())["chat_format"] == "llama3-instruct"


def test_bad_roles_stop_the_plan_with_file_and_line(tiny_factory, tmp_path):
    bad = ROWS[:2] + [{"id": "x", "prompt": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}]
    with pytest.raises(LlamakitError) as e:
        plan_run(_write(tmp_path, tiny_factory("llama3", 1), bad), gpu_facts=([], False))
    assert e.value.line == 3 and e.value.where.endswith("chat.jsonl") and "alternating" in e.value.what


def test_message_lists_need_a_chat_format(tiny_factory, tmp_path):
    with pytest.raises(LlamakitError, match="needs chat_format") as e:
        plan_run(_write(tmp_path, tiny_factory("llama3", 1), ROWS, chat_format="none"), gpu_facts=([], False))
    assert e.value.line == 2


def test_a_format_of_the_other_tokenizer_is_refused(tiny_factory, tmp_path):
    with pytest.raises(LlamakitError, match="use chat_format: llama2-chat"):
        plan_run(_write(tmp_path, tiny_factory("llama2", 1), ROWS), gpu_facts=([], False))


def test_chat_prompts_are_never_truncated(tiny_factory, tmp_path):
    long = [{"id": "l", "prompt": "word " * 200}]
    with pytest.raises(LlamakitError, match="truncating would cut the conversation's end") as e:
        plan_run(_write(tmp_path, tiny_factory("llama3", 1), long, on_long_prompt="truncate"), gpu_facts=([], False))
    assert e.value.line == 1
