"""`llamakit bench --workload score` and its HF peer (tools/hf_score_peer.py) run the same score workload on CPU
with the tiny preset (the device runs them at the 7B shape) and report the same scored-token count."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from llamakit.score.bench import score_texts

REPO = Path(__file__).resolve().parents[1]


def test_score_workload_is_deterministic_around_300_tokens():
    texts = score_texts(1000)
    assert texts == score_texts(1000) and len(texts) == 1000
    mean = sum(map(len, texts)) / len(texts)
    assert 280 < mean < 360 and min(map(len, texts)) >= 16 and all(3 <= t < 32000 for x in texts[:20] for t in x)


def test_bench_score_and_hf_peer_on_tiny_cpu():
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "2"}
    ours = subprocess.run([sys.executable, "-m", "llamakit", "bench", "--workload", "score", "--preset", "tiny",
                           "--device", "cpu", "--texts", "3", "--batch", "2", "--json"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=REPO)
    assert ours.returncode == 0, ours.stderr
    r = json.loads(ours.stdout)
    expected = sum(len(t) - 1 for t in score_texts(3))
    assert r["workload"] == "score" and r["scored_tokens"] == expected and r["tokens_per_s"] > 0
    peer = subprocess.run([sys.executable, "tools/hf_score_peer.py", "--preset", "tiny", "--texts", "3",
                           "--batches", "1,2"], env=env, capture_output=True, text=True, timeout=300, cwd=REPO)
    assert peer.returncode == 0, peer.stderr
    lines = [json.loads(x) for x in peer.stdout.splitlines()]
    assert [x["batch"] for x in lines] == [1, 2] and all(x["scored_tokens"] == expected for x in lines)
