"""Score statistics: the vocabulary-shard reduction equals the full softmax, the aggregates follow the issue's
formulas (undefined = null), AUROC equals the pairwise definition, texts are checked line by line, windows slide
as the HF perplexity guide."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llamakit.errors import LlamakitError
from llamakit.score.auroc import auroc, roc_curve, write_report
from llamakit.score.reduce import reduce_shard
from llamakit.score.stats import text_stats
from llamakit.score.texts import Text, Tokenized, read_texts, tokenize, windows


def _full(q: torch.Tensor, targets: torch.Tensor, p: torch.Tensor | None):
    lq = torch.log_softmax(q.double(), -1)
    pp = torch.softmax((q if p is None else p).double(), -1)
    t = q.gather(1, targets[:, None])
    mu = (pp * lq).sum(-1)
    return {"logprob": lq.gather(1, targets[:, None])[:, 0], "rank": (q > t).sum(-1) + 1,
            "entropy": -(lq.exp() * lq).sum(-1), "mu": mu, "s2": (pp * lq * lq).sum(-1) - mu * mu}


@pytest.mark.parametrize("with_reference", [False, True])
def test_shard_reduction_equals_full_softmax(with_reference):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(37, 1000, generator=g) * 4
    p = torch.randn(37, 1000, generator=g) * 3 if with_reference else None
    targets = torch.randint(0, 1000, (37,), generator=g)
    got = reduce_shard(q, targets, 0, None, p)
    want = _full(q, targets, p)
    for name in ("logprob", "entropy", "mu", "s2"):
        assert torch.allclose(getattr(got, name), want[name], atol=1e-5, rtol=1e-6), name
    assert torch.equal(got.rank, want["rank"])
    assert got.rank.min() >= 1


def test_stats_follow_the_formulas():
    lp, rk, ent = [-1.0, -2.0, -0.5, -4.0], [1, 3, 1, 120], [2.0, 1.0, 0.5, 3.0]
    mu, s2 = [-1.5, -1.0, -0.7, -3.0], [1.0, 0.5, 0.2, 2.0]
    s = text_stats(lp, rk, ent, mu, s2, with_reference=True)
    n = 4
    assert s["n_tokens"] == n
    assert s["logprob_sum"] == pytest.approx(-7.5)
    assert s["logprob_mean"] == pytest.approx(-7.5 / n)
    assert s["ppl"] == pytest.approx(math.exp(7.5 / n))
    lrm = (math.log(3) + math.log(120)) / n
    assert s["logrank_mean"] == pytest.approx(lrm)
    assert s["lrr"] == pytest.approx((7.5 / n) / lrm)
    assert s["entropy_mean"] == pytest.approx(6.5 / n)
    assert (s["gltr_top10"], s["gltr_top100"], s["gltr_top1000"]) == (0.75, 0.75, 1.0)
    assert s["fastdetect"] == pytest.approx((-7.5 - (-6.2)) / math.sqrt(3.7))
    assert s["xent_mean"] == pytest.approx(6.2 / n)
    assert s["binoculars"] == pytest.approx((7.5 / n) / (6.2 / n))


def test_undefined_stats_are_null_not_nan():
    s = text_stats([-0.1, -0.2], [1, 1], [0.3, 0.3], [-0.1, -0.1], [0.0, 0.0], with_reference=False)
    assert s["lrr"] is None  # every token ranked first: log ranks are all 0
    assert s["fastdetect"] is None  # no variance
    assert "xent_mean" not in s
    json.dumps(s, allow_nan=False)


def test_auroc_is_the_pairwise_probability_with_half_ties():
    pos, neg = [0.9, 0.8, 0.4, 0.4], [0.4, 0.3, 0.1]
    pairs = [(1.0 if a > b else 0.5 if a == b else 0.0) for a in pos for b in neg]
    assert auroc(pos, neg) == pytest.approx(sum(pairs) / len(pairs))
    assert auroc([1, 2], [3, 4]) == 0.0 and auroc([], [1]) is None
    fpr, tpr = roc_curve(pos, neg)
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0.0, 0.0, 1.0, 1.0)


def test_auroc_report_writes_table_and_png(tmp_path):
    rows = [{"label": "human", "ppl": 30.0 + i, "lrr": None} for i in range(5)] + \
           [{"label": "machine", "ppl": 5.0 + i, "lrr": 1.0} for i in range(5)]
    lines, txt, png = write_report(rows, "label", ["ppl", "lrr"], tmp_path / "scores.jsonl")
    assert txt.name == "scores.auroc.txt" and png.name == "scores.roc.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ppl_line = next(line for line in lines if line.startswith("ppl"))
    assert "0.000" in ppl_line and "lower = machine" in ppl_line
    assert "n/a" in next(line for line in lines if line.startswith("lrr"))


@pytest.mark.parametrize("content,field,message", [
    ('{"text": "a"}\n{"txt": "b"}\n', {}, "2: no 'text' field"),
    ('{"text": "a"}\n{"text": "  "}\n', {}, "2: field 'text' is empty"),
    ('{"text": "a", "label": "human"}\n{"text": "b"}\n', {"label_field": "label"}, "2: no 'label' label"),
    ('{"text": "a"}\n', {"prefix_field": "lead"}, "1: no 'lead' field"),
    ('{"text": "a", "ppl": 3}\n', {}, "1: field 'ppl' would be overwritten"),
])
def test_bad_texts_name_file_and_line(tmp_path, content, field, message):
    path = tmp_path / "texts.jsonl"
    path.write_text(content)
    with pytest.raises(LlamakitError) as e:
        read_texts(path, **field)
    assert f"{path}:{message}" in e.value.one_line() and "Fix:" in e.value.one_line()


def test_long_text_without_stride_is_refused_with_the_line(tmp_path):
    t = [Text(0, 1, 1, "x"), Text(2, 3, 3, "y")]
    with pytest.raises(LlamakitError) as e:
        tokenize(t, lambda xs: [[5] * (3 if x == "x" else 40) for x in xs], 1, 16, None, tmp_path / "t.jsonl")
    assert ":3: text has 41 tokens" in e.value.one_line() and "stride" in e.value.fix


def test_sliding_windows_score_each_text_token_once_with_context():
    item = Tokenized(Text(0, 1, 1, "x"), list(range(100, 150)), n_context=6)  # bos + 5 prefix tokens
    wins = windows(item, max_seq_len=16, stride=8)
    scored = [w.tokens[j] for w in wins for j in range(w.lo, w.hi)]
    assert scored == list(range(106, 150))  # every text token once, in order; bos and prefix never
    assert all(len(w.tokens) <= 16 for w in wins)
    assert all(w.lo >= 16 - 8 for w in wins[1:])  # later windows keep max_seq_len - stride tokens of context
    single = windows(item, max_seq_len=64, stride=None)
    assert len(single) == 1 and (single[0].lo, single[0].hi) == (6, 50)
