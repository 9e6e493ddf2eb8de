"""`llamakit score` equals HF LlamaForCausalLM on the same weights (fp32, CPU): per-token logprob, rank and entropy,
and the Fast-DetectGPT / Binoculars moments against a second (reference) model, at MP 1 in-process and MP 2
under real torchrun + gloo, for LLaMA-1 and GQA styles; sliding windows score what the HF perplexity guide does."""

from __future__ import annotations

import pytest
import torch

from llamakit.tokenizer import Tokenizer
from tests.helpers.hf_reference import build_hf_model
from tests.helpers import mp_score

TEXTS = [("", "Der Stadtrat hat am Montagabend beschlossen, die Innenstadt autofrei zu machen."),
         ("The railway company", " apologised for the delays on Monday."),
         ("", "A"),
         ("Über die Zukunft", " der Innenstadt wird seit Jahren gestritten; Händler fürchten um ihre Kunden.")]


def _items(ckpt):
    tok = Tokenizer(ckpt / "tokenizer.model")
    return [[[tok.bos_id] + tok.sp.encode(pre) + tok.sp.encode(text), 1 + len(tok.sp.encode(pre))]
            for pre, text in TEXTS]


@torch.no_grad()
def _hf(ckpt, ref, items, window: int | None = None, stride: int | None = None):
    """Per text token: logprob, rank (1 + #logits above the target's), entropy, and mu/s2 of log q under p."""
    q_model = build_hf_model(ckpt)
    p_model = build_hf_model(ref) if ref else q_model
    out = {}
    for i, (toks, n_ctx) in enumerate(items):
        ids = torch.tensor([toks])
        if window is None:
            spans = [(0, len(toks), n_ctx)]
        else:  # the HF perplexity guide's loop
            spans, prev_end = [], 0
            for begin in range(0, len(toks), stride):
                end = min(begin + window, len(toks))
                spans.append((begin, end, max(prev_end, n_ctx)))
                prev_end = end
                if end == len(toks):
                    break
        res = {f: [] for f in ("logprob", "rank", "entropy", "mu", "s2")}
        for begin, end, first in spans:
            lq = q_model(ids[:, begin:end]).logits[0].double()
            lp = p_model(ids[:, begin:end]).logits[0].double()
            for j in range(max(first, begin + 1), end):
                row, t = lq[j - 1 - begin], toks[j]
                logq = torch.log_softmax(row, -1)
                p = torch.softmax(lp[j - 1 - begin], -1)
                mu = float((p * logq).sum())
                res["logprob"].append(float(logq[t]))
                res["rank"].append(int((row > row[t]).sum()) + 1)
                res["entropy"].append(float(-(logq.exp() * logq).sum()))
                res["mu"].append(mu)
                res["s2"].append(float((p * logq * logq).sum()) - mu * mu)
        out[str(i)] = res
    return out


def _assert_equal(got, want):
    assert got.keys() == want.keys()
    for k in want:
        assert got[k]["rank"] == want[k]["rank"], k
        for f in ("logprob", "entropy", "mu", "s2"):
            diff = max(abs(a - b) for a, b in zip(got[k][f], want[k][f]))
            assert len(got[k][f]) == len(want[k][f]) and diff < 1e-4, (k, f, diff)


@pytest.mark.parametrize("style", ["llama1", "llama2-gqa"])
def test_mp1_scores_equal_hf(style, tiny_factory, mp1_group):
    ckpt = tiny_factory(style, 1)
    items = _items(ckpt)
    got = mp_score.score_texts(str(ckpt), None, items, 128, None, max_batch_size=3)
    want = _hf(ckpt, None, items)
    _assert_equal(got, want)
    assert sum(len(v["rank"]) for v in got.values()) == sum(len(t) - n for t, n in items)  # text tokens only
    assert any(r > 1 for v in got.values() for r in v["rank"])  # ranks really vary


def test_mp1_reference_moments_and_sliding_windows_equal_hf(tiny_factory, mp1_group):
    ckpt, ref = tiny_factory("llama2", 1), tiny_factory("llama2", 1, seed=1)
    items = _items(ckpt)
    _assert_equal(mp_score.score_texts(str(ckpt), str(ref), items, 128, None, 2), _hf(ckpt, ref, items))
    _assert_equal(mp_score.score_texts(str(ckpt), None, items, 12, 5, 4), _hf(ckpt, None, items, 12, 5))


@pytest.mark.slow
def test_mp2_scores_with_reference_equal_hf_llama1_and_gqa(tiny_factory, tmp_path):
    styles = ["llama1", "llama2-gqa"]
    specs, want = [], []
    for style in styles:
        ckpt, ref = tiny_factory(style, 2), tiny_factory(style, 2, seed=1)
        items = _items(ckpt)
        specs.append({"ckpt": str(ckpt), "ref": str(ref), "items": items, "max_seq_len": 128, "stride": None,
                      "max_batch_size": 3})
        want.append(_hf(ckpt, ref, items))
    for got, expected in zip(mp_score.run_under_torchrun(2, tmp_path, specs), want):
        _assert_equal(got, expected)
