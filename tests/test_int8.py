"""int8 weight-only: quantization error is bounded, the model stays close to 16/32-bit, MP works, memory halves;
and linear's fixed row chunks (batch_invariant) give a row the same bits at any row count, int8 or not."""

from __future__ import annotations

import json

import torch

from llamakit.checkpoint import open_checkpoint
from llamakit.checkpoint.params import PRESETS
from llamakit.engine.api import EngineConfig, Request
from llamakit.engine.engine import build_engine
from llamakit.model.int8_kernels import int8_matmul_eager
from llamakit.memory import GiB, plan_memory
from llamakit.model.linear import quantize_int8
from llamakit.tokenizer import Tokenizer


def test_per_row_quantization_error_is_bounded():
    torch.manual_seed(0)
    w = torch.randn(64, 256)
    q, scale = quantize_int8(w)
    assert q.dtype == torch.int8 and scale.shape == (64,)
    assert ((q.float() * scale[:, None] - w).abs() <= scale[:, None] / 2 + 1e-6).all()
    x = torch.randn(3, 256)
    rel = (int8_matmul_eager(x, q, scale) - x @ w.T).norm() / (x @ w.T).norm()
    assert rel < 0.01


def _greedy(ckpt, quantize: str, n: int = 16) -> dict[int, list[int]]:
    tok = Tokenizer(ckpt / "tokenizer.model")
    prompts = ["Der Stadtrat hat", "The weather service warned of", "Die Bahn entschuldigte sich", "Researchers"]
    eng = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=64, max_batch_size=4, quantize=quantize))
    return {c.request.key: c.tokens for c in eng.generate(Request(i, tok.encode(p), n) for i, p in enumerate(prompts))}


def test_int8_greedy_mostly_agrees_with_fp32(tiny_factory, mp1_group):
    ckpt = tiny_factory("llama2-gqa", 1)
    full, q8 = _greedy(ckpt, "none"), _greedy(ckpt, "int8")
    first = sum(full[k][:4] == q8[k][:4] for k in full)
    assert first >= 3, (full, q8)  # the first tokens agree for (almost) every prompt


def test_int8_layers_really_hold_int8(tiny_factory, mp1_group):
    eng = build_engine(open_checkpoint(tiny_factory("llama2", 1)), EngineConfig(max_seq_len=32, quantize="int8"))
    model = eng.runner.model
    assert model.layers[0].attention.wqkv.weight.dtype == torch.int8
    assert model.output.weight.dtype == torch.int8
    assert model.tok_embeddings.weight.dtype == torch.float32  # embeddings stay in the compute dtype


def test_int8_plan_fits_65b_on_two_48gb_gpus():
    cfg = PRESETS["llama-65b"]
    bf16 = plan_memory(cfg, 32000, 2, "bf16", 8, 1024)
    int8 = plan_memory(cfg, 32000, 2, "int8", 8, 1024)
    assert bf16.weights > 48 * GiB > int8.total
    assert abs(int8.weights / bf16.weights - 0.5) < 0.03


def test_int8_runs_at_mp2(tiny_factory, tmp_path):
    from tests.test_model_reference import _torchrun_outputs  # same torchrun harness

    spec_cfg = {"max_seq_len": 128, "max_batch_size": 3, "quantize": "int8"}
    out = _torchrun_outputs(tiny_factory("llama2-gqa", 2), 2, tmp_path, config=spec_cfg)
    assert len(out) == 5 and all(len(toks) > 0 or reason == "stop" for toks, reason in out.values())
    json.dumps(out)


def test_fixed_row_chunks_give_a_row_the_same_bits_at_every_row_count_for_16_bit_and_int8_weights():
    """linear() with `invariant_rows` (batch_invariant): a row's product is the same bits whether it comes alone or
    among 3, 40 or 700 rows, for 16-bit weights and for int8 ones, and equals the plain product to rounding."""
    from torch import nn

    from llamakit.model.linear import INVARIANT_ROWS, linear, quantize_int8_

    torch.manual_seed(0)
    x = torch.randn(700, 96)
    for int8 in (False, True):
        layer = nn.Module()
        layer.weight = nn.Parameter(torch.randn(80, 96) / 10, requires_grad=False)
        if int8:
            quantize_int8_(layer)
        plain = linear(x, layer)
        layer.invariant_rows = INVARIANT_ROWS["cpu"]
        rows = [linear(x[:m], layer) for m in (1, 3, 40, 700)]
        assert all(torch.equal(r[0], rows[0][0]) for r in rows) and torch.equal(rows[2][17], rows[3][17])
        assert rows[3].shape == plain.shape and torch.allclose(rows[3], plain, atol=1e-5)
        assert linear(x[:5].view(1, 5, 96), layer).shape == (1, 5, 80)  # leading dims kept
