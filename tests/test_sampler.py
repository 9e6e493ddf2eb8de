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


NUCLEUS_CHECK = r"""
import json, torch
from llamakit.engine.nucleus import nucleus_sample
from llamakit.engine.sampler import FLOAT_ROWS, INT_ROWS, N_FLOAT, N_INT, sample_step
torch.manual_seed(0)
B, V = 24, 1500
logits = torch.randn(B, V) * 3
logits[3, :] = 0.5  # one flat row: every token tied
logits[4, 7] = 1e3  # one certain row
logits[0, 1200] = logits[0, 100] = 40.0  # greedy rows with a tied max: the first index, across the kernel's lanes
logits[6, 1029] = logits[6, 5] = 50.0  # and within one lane (5 and 1,029 share a lane of a 1,024-wide block)
ints = torch.zeros((N_INT, B), dtype=torch.int64)
ints[INT_ROWS.index("key")] = torch.arange(B) * 7919
ints[INT_ROWS.index("sample")] = torch.arange(B) % 3
ints[INT_ROWS.index("step")] = torch.arange(B) * 5 + 2**33  # int64 counters wrap as the eager hash does
ints[INT_ROWS.index("seed")] = 12345
floats = torch.zeros((N_FLOAT, B))
floats[FLOAT_ROWS.index("temperature")] = torch.tensor([0.0, 0.3, 0.6, 1.0, 1.5, 0.7] * 4)
floats[FLOAT_ROWS.index("top_p")] = torch.tensor([0.9, 0.5, 0.95, 1.0, 0.1, 0.99, 0.8, 0.9] * 3)
got = nucleus_sample(logits, ints, floats).tolist()
want = sample_step(logits, ints, floats, None, "sample").tolist()
# seed 0, key 0, step 242: token 30,891's hash is the top one, whose U rounded to 1.0 (U_MAX). Row 0: it is far
# outside the nucleus; row 1: flat logits, top_p 1, it is kept
edge = torch.randn(2, 32000)
edge[0, 30891] = -30.0
edge[1] = 0.0
e_ints = torch.zeros((N_INT, 2), dtype=torch.int64)
e_ints[INT_ROWS.index("step")] = 242
e_floats = torch.zeros((N_FLOAT, 2))
e_floats[FLOAT_ROWS.index("temperature")] = 1.0
e_floats[FLOAT_ROWS.index("top_p")] = torch.tensor([0.9, 1.0])
print(json.dumps({"got": got, "want": want, "edge_kernel": nucleus_sample(edge, e_ints, e_floats).tolist(),
                  "edge_eager": sample_step(edge, e_ints, e_floats, None, "sample").tolist()}))
"""


def test_the_nucleus_kernel_draws_what_the_eager_sort_draws():
    """The Triton sampling kernel (no sort; Triton's CPU interpreter here) picks the same token as the eager path
    (sort + the same nucleus rule + the same race) for every row: greedy rows, top_p 1, a flat row, a certain one."""
    import json
    import os
    import subprocess
    import sys

    pytest = __import__("pytest")
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    out = subprocess.run([sys.executable, "-c", NUCLEUS_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["got"] == res["want"]
    assert res["got"][0] == 100 and res["got"][6] == 5
    # the race's U never reaches 1: the top hash's token is not drawn from outside the nucleus (the eager path drew
    # it: p / -log(1.0) = 0 / 0 = NaN, which argmax picks), and wins when kept
    assert res["edge_kernel"][0] != 30891 and res["edge_eager"] == res["edge_kernel"]
    assert res["edge_kernel"][1] == 30891


def test_ties_at_the_nucleus_edge_are_kept_or_dropped_together():
    from llamakit.engine.nucleus import nucleus_keep_sorted

    p = torch.tensor([[0.4, 0.2, 0.2, 0.1, 0.1]])
    keep = nucleus_keep_sorted(p, torch.tensor([[0.5]]))
    # mass strictly above the 0.2s is 0.4 <= 0.5: both kept; above the 0.1s is 0.8: both dropped
    assert keep.tolist() == [[True, True, True, False, False]]
