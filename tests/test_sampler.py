"""Sampling: deterministic per (seed, key, step), top-p as Meta's generator, and a correct distribution."""

from __future__ import annotations

import torch

from llamakit.engine.sampler import hash_uniform, sample


def test_hash_uniform_is_uniform_and_depends_on_every_input():
    keys = torch.arange(64, dtype=torch.int64)
    steps = torch.zeros(64, dtype=torch.int64)
    ids = torch.arange(1000, dtype=torch.int64).expand(64, -1)
    u = hash_uniform(3, keys, steps, ids)
    assert u.min() > 0 and u.max() < 1
    assert abs(u.mean().item() - 0.5) < 0.01
    hist = torch.histc(u, bins=10, min=0, max=1) / u.numel()
    assert (hist - 0.1).abs().max() < 0.01
    assert not torch.equal(u, hash_uniform(4, keys, steps, ids))
    assert not torch.equal(u, hash_uniform(3, keys, steps + 1, ids))
    assert torch.equal(u[5], hash_uniform(3, keys[5:6], steps[5:6], ids[5:6])[0])  # row independent of batch


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, -1.0, 4.9]])
    keys = torch.tensor([0, 1])
    assert sample(logits, 0.0, 0.9, 1, keys, keys).tolist() == [1, 0]


def test_top_p_keeps_only_the_nucleus_and_matches_probabilities():
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    logits = probs.log().expand(20000, -1).contiguous()
    keys = torch.arange(20000, dtype=torch.int64)
    steps = torch.zeros(20000, dtype=torch.int64)
    toks = sample(logits, 1.0, 0.7, 11, keys, steps)
    counts = torch.bincount(toks, minlength=4).float() / len(toks)
    # Meta's rule keeps tokens whose preceding mass is <= 0.7: {0.5, 0.3}; renormalised 0.625 / 0.375
    assert counts[2] == 0 and counts[3] == 0
    assert abs(counts[0].item() - 0.625) < 0.015 and abs(counts[1].item() - 0.375) < 0.015
