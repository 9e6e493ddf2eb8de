"""`llamakit bench --workload score` and its HF peer (tools/hf_score_peer.py) run the same score workload (on CPU
with the tiny preset here; the device runs them at the 7B shape) and count the same scored tokens."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from llamakit.score.bench import score_bench, score_texts

REPO = Path(__file__).resolve().parents[1]


def test_score_workload_is_deterministic_around_300_tokens():
    texts = score_texts(1000)
    assert texts == score_texts(1000) and len(texts) == 1000
    mean = sum(map(len, texts)) / len(texts)
    assert 280 < mean < 360 and min(map(len, texts)) >= 16 and all(3 <= t < 32000 for x in texts[:20] for t in x)


def test_bench_score_and_hf_peer_on_tiny_cpu(mp1_group, capsys, monkeypatch):
    expected = sum(len(t) - 1 for t in score_texts(3))
    r = score_bench("tiny", "cpu", "fp32", texts=3, batch=2)
    assert r.workload == "score" and r.scored_tokens == expected and r.tokens_per_s > 0 and r.tflop_per_s > 0
    spec = importlib.util.spec_from_file_location("hf_score_peer", REPO / "tools" / "hf_score_peer.py")
    peer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peer)
    monkeypatch.setattr("sys.argv", ["hf_score_peer.py", "--preset", "tiny", "--texts", "3", "--batches", "1,2"])
    peer.main()
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["batch"] for x in lines] == [1, 2] and all(x["scored_tokens"] == expected for x in lines)
