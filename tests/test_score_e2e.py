"""`llamakit score` end to end (real torchrun + gloo on CPU): MP=2 with a reference model and labels gives the same
per-token scores as MP=1 and the AUROC table and ROC plot; kill -9 mid-run then re-run (as two data-parallel replicas)
resumes by id and loses or repeats nothing; bad input and a mismatched reference are one line with file:line and the
fix before anything starts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llamakit.checkpoint.tiny import train_tokenizer
from llamakit.errors import LlamakitError
from llamakit.run.status import run_status
from llamakit.score.launch import plan_score

REPO = Path(__file__).resolve().parents[1]
WORDS = ("Der Stadtrat hat am Montagabend beschlossen die Innenstadt autofrei zu machen und Händler fürchten "
         "um ihre Kunden während Radfahrer sich freuen The railway company apologised for the delays").split()


def text_line(i: int) -> str:
    n = 6 + (i * 7) % 25
    words = [WORDS[(i * 3 + k * 5) % len(WORDS)] for k in range(n)]
    return json.dumps({"id": f"t-{i:03d}", "text": " ".join(words), "lead": "Nachrichten:",
                       "label": "machine" if i % 3 == 0 else "human"}, ensure_ascii=False)


@pytest.fixture(scope="module")
def world(tiny_factory, tmp_path_factory):
    root = tmp_path_factory.mktemp("score")

    def recipe(name: str, n: int = 12, mp: int = 1, **keys: object) -> Path:
        texts = root / f"texts{n}.jsonl"
        if not texts.exists():
            texts.write_text("".join(text_line(i) + "\n" for i in range(n)), encoding="utf-8")
        body = {"ckpt_dir": str(tiny_factory("llama2", mp)), "text_path": str(texts), "prefix_field": "lead",
                "out_path": str(root / f"{name}.jsonl"), "max_seq_len": 128, "device": "cpu", **keys}
        p = root / f"{name}.yaml"
        p.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items()), encoding="utf-8")
        return p

    return root, recipe


def run_cli(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "llamakit", "score", *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=200)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


N = 40
KEYS = dict(per_token=True, label_field="label")


@pytest.fixture(scope="module")
def mp1_rows(world, tiny_factory):
    """An uninterrupted MP=1 run with a reference model, one text per forward."""
    root, recipe = world
    res = run_cli(root, str(recipe("mp1", n=N, reference_ckpt_dir=str(tiny_factory("llama2", 1, seed=1)),
                                   max_batch_size=1, **KEYS)))
    assert res.returncode == 0, res.stderr + (root / "mp1.log").read_text()
    return rows_of(root / "mp1.jsonl")


def test_mp2_with_reference_and_labels_matches_mp1_and_writes_auroc(world, tiny_factory, mp1_rows):
    root, recipe = world
    res = run_cli(root, str(recipe("mp2", n=N, mp=2, reference_ckpt_dir=str(tiny_factory("llama2", 2, seed=1)),
                                   max_batch_size=7, **KEYS)))
    assert res.returncode == 0, res.stderr + (root / "mp2.log").read_text()
    assert "MP=2 x DP=1" in (root / "mp2.log").read_text()
    two = rows_of(root / "mp2.jsonl")
    assert [r["id"] for r in two] == [f"t-{i:03d}" for i in range(N)]  # input order, each once
    for a, b in zip(mp1_rows, two):
        assert a["token_ids"] == b["token_ids"] and a["token_ranks"] == b["token_ranks"]
        assert max(abs(x - y) for x, y in zip(a["token_logprobs"], b["token_logprobs"])) < 1e-4
        assert abs(a["binoculars"] - b["binoculars"]) < 1e-4 and abs(a["fastdetect"] - b["fastdetect"]) < 1e-3
        assert b["n_tokens"] == len(b["token_ids"]) and b["text"] and b["label"] in ("human", "machine")
    assert f"{N} texts: {N} scored now" in res.stdout and "AUROC for label 'machine'" in res.stdout
    assert "binoculars" in (root / "mp2.auroc.txt").read_text()
    assert (root / "mp2.roc.png").read_bytes()[:4] == b"\x89PNG"
    assert "Traceback" not in res.stdout + res.stderr


def _kill_everything(parent: subprocess.Popen) -> None:
    procs = [psutil.Process(parent.pid)] + psutil.Process(parent.pid).children(recursive=True)
    os.killpg(parent.pid, signal.SIGKILL)
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    parent.wait(timeout=30)


def test_kill_9_then_resume_by_id_loses_and_repeats_nothing(world, tiny_factory, mp1_rows):
    root, recipe = world
    r = recipe("killed", n=N, reference_ckpt_dir=str(tiny_factory("llama2", 1, seed=1)), max_batch_size=1, **KEYS)
    out = root / "killed.jsonl"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-m", "llamakit", "score", str(r)], cwd=root, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while not (out.exists() and out.read_bytes().count(b"\n") >= 3):
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it could be killed"
        time.sleep(0.01)
    live = run_status(out)  # `llamakit status` knows score runs as it knows generation runs
    assert live.state == "running" and live.total == N
    _kill_everything(proc)
    kept = out.read_bytes().count(b"\n")
    assert 3 <= kept < N
    stopped = run_status(out)
    assert stopped.state == "stopped" and stopped.done == kept and "llamakit score" in stopped.resume
    with open(out, "ab") as f:  # a row torn in half, as a kill in the middle of a write leaves it
        f.write(b'{"id": "t-059", "n_tok')
    res = run_cli(root, str(r), "--nproc", "2")  # resumed by two data-parallel replicas
    assert res.returncode == 0, res.stderr
    assert f"{N - kept} scored now, {kept} were already in the output (resumed)" in res.stdout
    assert "MP=1 x DP=2" in (root / "killed.log").read_text()
    assert run_status(out).state == "complete"
    rows = rows_of(out)
    assert [x["id"] for x in rows] == [x["id"] for x in mp1_rows]  # every text once, in input order
    for got, want in zip(rows, mp1_rows):
        assert got.keys() == want.keys() and got["token_ranks"] == want["token_ranks"]
        assert got["token_logprobs"] == pytest.approx(want["token_logprobs"], abs=1e-5)
        assert got["fastdetect"] == pytest.approx(want["fastdetect"], abs=1e-4)


@pytest.mark.parametrize("line,keys,message", [
    ('{"id": "x", "text": "' + "Stadtrat " * 80 + '", "lead": "a"}', {}, "text has"),
    ('{"id": "x", "text": "", "lead": "a"}', {}, "field 'text' is empty"),
    ('{"id": "x", "body": "Hallo", "lead": "a"}', {}, "no 'text' field"),
])
def test_bad_text_is_one_line_with_file_line_and_fix(world, line, keys, message):
    root, recipe = world
    r = recipe("bad", n=3, **keys)
    texts = root / "bad-texts.jsonl"
    texts.write_text(text_line(0) + "\n" + line + "\n", encoding="utf-8")
    r.write_text(r.read_text().replace(str(root / "texts3.jsonl"), str(texts)))
    with pytest.raises(LlamakitError) as e:
        plan_score(r, gpu_facts=([], False))
    assert e.value.where == str(texts) and e.value.line == 2 and message in e.value.what and e.value.fix
    assert not (root / "bad.jsonl").exists() and not (root / ".bad.jsonl.llamakit").exists()


def test_reference_at_another_mp_names_the_reshard_command(world, tiny_factory):
    root, recipe = world
    ref = tiny_factory("llama2", 2, seed=1)
    with pytest.raises(LlamakitError) as e:
        plan_score(recipe("refmp", reference_ckpt_dir=str(ref)), gpu_facts=([], False))
    assert e.value.line is not None and "MP=2" in e.value.what
    assert f"`llamakit reshard {ref} {ref}-mp1 --mp 1`" in e.value.fix


def test_reference_with_another_tokenizer_is_refused(world, tiny_copy):
    root, recipe = world
    other = tiny_copy("llama2", 1, seed=1)
    train_tokenizer(other / "tokenizer.model", corpus=REPO / "llamakit" / "assets" / "demo-corpus.txt")
    with pytest.raises(LlamakitError) as e:
        plan_score(recipe("reftok", reference_ckpt_dir=str(other)), gpu_facts=([], False))
    assert "another tokenizer" in e.value.what and e.value.line is not None


def test_stride_must_leave_context(world):
    root, recipe = world
    with pytest.raises(LlamakitError) as e:
        plan_score(recipe("stride", stride=128), gpu_facts=([], False))
    assert "stride" in e.value.what and e.value.line is not None


def test_one_label_only_is_refused_before_scoring(world, tmp_path):
    root, recipe = world
    texts = root / "one-label.jsonl"
    texts.write_text("".join(json.dumps({"id": i, "text": "Hallo Welt", "label": "human"}) + "\n" for i in range(3)))
    r = recipe("onelabel", label_field="label")
    r.write_text(r.read_text().replace(str(root / "texts12.jsonl"), str(texts)).replace('prefix_field: "lead"\n', ""))
    with pytest.raises(LlamakitError) as e:
        plan_score(r, gpu_facts=([], False))
    assert "exactly two labels" in e.value.what and e.value.where == str(texts)


def test_dry_run_plan_names_both_models_and_the_score_worker(world, tiny_factory):
    from llamakit.score.launch import describe

    root, recipe = world
    setup = plan_score(recipe("dry", reference_ckpt_dir=str(tiny_factory("llama2", 1, seed=1)), stride=64),
                       gpu_facts=([], False))
    lines = "\n".join(describe(setup.plan, setup.argv))
    assert "reference    " in lines and "stride 64" in lines and "-m llamakit.score.worker" in lines
    assert "12 texts, 0 already in the output, 12 to score" in lines and "reference" in setup.plan.memory
    assert not (root / "dry.jsonl").exists() and not (root / ".dry.jsonl.llamakit").exists()
