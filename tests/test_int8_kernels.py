"""The Triton matmuls: the int8 weight-only kernels (model/int8_kernels.py): every named configuration, GEMV and
tl.dot, split-K or not, computes what the eager twin computes, and the schedule that picks one per decode batch covers
every batch the kernel takes; the batch-invariant matmul (model/fixed_matmul.py) computes x @ W.T with every tile
and split. In Triton's CPU interpreter; at 7B sizes in bf16, bits included: tests/test_gpu.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamakit.errors import LlamakitError
from llamakit.model import int8_kernels as Q

ROOT = Path(__file__).resolve().parents[1]

# (rows of x, N, K): N and K are no multiple of any block (K a multiple of 16, which the kernel needs), and one K
# that every BLOCK_K divides (the unmasked path; long enough that split-K "auto" cuts it on the interpreter's 4 SMs).
# 16 rows take 4 GEMV programs per column block: one config there.
INT8_CHECK = r"""
import json, torch
from llamakit.model import int8_kernels as Q
from llamakit.model.linear import quantize_int8
torch.manual_seed(0)
cases = [(1, 37, 160), (3, 37, 160), (2, 21, 2048), (16, 37, 160), (40, 21, 160)]
res = {}
for m, n, k in cases:
    x = torch.randn(m, k); q, s = quantize_int8(torch.randn(n, k))
    ref = Q.int8_matmul_eager(x, q, s)
    for name, cfg in Q.CONFIGS.items():
        if (m == 16 and cfg.kernel == "gemv" and name != "gemv_n16_k512_w4_s3") or (m == 40 and cfg.kernel == "gemv"):
            continue
        got = Q.int8_matmul(x, q, s, config=name)
        err = ((got - ref).abs().max() / ref.abs().max()).item()
        res[f"{name}@{m}x{n}x{k}"] = err if got.shape == ref.shape else 1.0
    res[f"default@{m}x{n}x{k}"] = ((Q.int8_matmul(x, q, s) - ref).abs().max() / ref.abs().max()).item()
    if m == 1:  # the same GEMV over unquantized weights (gemv16: batch 1 with 16-bit weights on GPUs)
        w = torch.randn(n, k)
        ref16 = torch.nn.functional.linear(x, w)
        res[f"gemv16@{m}x{n}x{k}"] = ((Q.gemv16(x, w) - ref16).abs().max() / ref16.abs().max()).item()
from llamakit.model import fixed_matmul as F
for m, n, k in [(1, 37, 160), (70, 37, 160), (3, 21, 2048), (130, 150, 256)]:
    x = torch.randn(m, k); w = torch.randn(n, k)  # fp32: the interpreter's bf16 is broken, its fp32 dot exact
    ref = torch.nn.functional.linear(x, w)
    for cfg in F.TILES:
        for sk in (1, 2, 3):
            got = F.fixed_matmul(x, w, cfg, sk)
            res[f"fixed@{cfg.name}_sk{sk}@{m}x{n}x{k}"] = ((got - ref).abs().max() / ref.abs().max()).item()
print(json.dumps(res))
"""


def test_every_int8_config_matches_the_eager_twin_in_interpreter():
    pytest.importorskip("triton")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(ROOT)}
    env.pop("LLAMAKIT_INT8_MM", None)
    proc = subprocess.run([sys.executable, "-c", INT8_CHECK], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {key.split("@")[0] for key in res} == set(Q.CONFIGS) | {"default", "gemv16", "fixed"}
    assert len([key for key in res if key.startswith("fixed@")]) == 4 * 3 * 3
    bad = {key: err for key, err in res.items() if not err < 1e-5}
    assert not bad, bad


def test_schedule_gives_every_decode_batch_a_known_config(monkeypatch):
    monkeypatch.delenv("LLAMAKIT_INT8_MM", raising=False)
    assert all(name in Q.CONFIGS for _, name in Q.SCHEDULE)
    assert Q.SCHEDULE[-1][0] >= Q.INT8_MM_MAX_ROWS  # every batch the linear layers send to the kernel
    for rows in range(1, Q.INT8_MM_MAX_ROWS + 1):
        cfg = Q.pick_config(rows)
        assert cfg.kernel == "dot" or rows <= Q.GEMV_MAX_ROWS  # a GEMV past 4 rows would read the weights again
    assert Q.pick_config(1).kernel == "gemv"  # batch 1 streams the weights without tl.dot


def test_schedule_override_for_a_measurement(monkeypatch):
    monkeypatch.setenv("LLAMAKIT_INT8_MM", "1:gemv_n16_k512_w4_s3, 8:dot_n32_k128_w4_s4_skauto")
    assert Q.pick_config(1).name == "gemv_n16_k512_w4_s3"
    assert Q.pick_config(5).name == "dot_n32_k128_w4_s4_skauto"
    assert Q.pick_config(200).name == Q.SCHEDULE[-1][1]  # past the override: the SCHEDULE
    monkeypatch.setenv("LLAMAKIT_INT8_MM", "1:gemv_fastest")
    with pytest.raises(LlamakitError, match="LLAMAKIT_INT8_MM.*gemv_fastest") as e:
        Q.pick_config(1)
    assert "gemv_n8_k512_w4_s3_cvtbf16" in e.value.fix  # the fix lists the configs


def test_fixed_matmul_picks_its_tile_by_rows_and_fits_its_pipeline_to_the_gpu():
    """The tile: the largest that gives every SM a program, 128-row tiles only past 64 rows; the pipeline: as deep
    as a block's shared memory allows (an RTX A6000's 99 KiB against an H200's 227 KiB), never below 2."""
    from llamakit.model import fixed_matmul as F

    small, mid = F.TILES[2], F.TILES[1]
    assert F.pick_tile(1, 4096, 1, 132) is small  # 7B's wo at batch 1: 64 programs at most
    assert F.pick_tile(1, 22016, 1, 132) is mid  # w13: 172 programs of 64 x 128
    assert F.pick_tile(64, 32000, 1, 132) is mid  # 128-row tiles would be half padding
    assert F.pick_tile(1024, 4096, 1, 132) is F.LARGE
    assert F.pick_tile(256, 4096, 2, 132) is mid  # w2 at 256 rows: 128 large tiles are too few
    assert F.split_k(4096, 11008) == 2 and F.split_k(4096, 4096) == 1 and F.split_k(5120, 6912) == 1
    a6000, h200 = 101376, 232448
    assert [F.stages(c, h200) for c in F.TILES] == [c.num_stages for c in F.TILES]
    assert [F.stages(c, a6000) for c in F.TILES] == [2, 3, 2]
    assert all(F.SPLIT_ALIGN % c.block_k == 0 for c in F.TILES)
    # where K is cut follows the shape, not the tile: 7B's w2, and a K whose half no 128-key tile divides
    assert F.part_length(11008, 2) == 5632 and F.part_length(11072, 2) == 5632 and F.part_length(4096, 1) == 4096
