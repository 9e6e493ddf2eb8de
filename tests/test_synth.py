"""write_random_checkpoint: any shape, correct split shapes and params.json, a valid checklist, deterministic."""

from __future__ import annotations

import json

import pytest
import torch

from llamakit.checkpoint.params import ModelConfig
from llamakit.checkpoint.shards import load_shard, open_checkpoint
from llamakit.checkpoint.synth import main, write_random_checkpoint
from llamakit.errors import LlamakitError
from llamakit.inspection import inspect_checkpoint

SMALL = ModelConfig(dim=128, n_layers=2, n_heads=8, n_kv_heads=2, multiple_of=64, ffn_dim_multiplier=1.3,
                    vocab_size=1000)


@pytest.mark.parametrize("mp", [1, 2])
def test_written_checkpoint_opens_and_inspects_clean(tmp_path, mp):
    ckpt = write_random_checkpoint(tmp_path / "c", SMALL, mp=mp, dtype="bf16", vocab=1000)
    opened = open_checkpoint(ckpt)
    assert opened.mp == mp and opened.config == SMALL and opened.vocab_rows == 1000
    r = inspect_checkpoint(ckpt, gpus=[], verify=True)
    assert codes(r) <= {"tokenizer-missing"} and r.checklist.ok
    assert r.model.param_count == SMALL.param_count(1000) and r.model.dtype == "bf16"
    sd = load_shard(ckpt / "consolidated.00.pth")
    assert torch.all(sd["norm.weight"] == 1) and sd["layers.0.attention.wk.weight"].shape == (32 // mp, 128)
    w = sd["layers.1.feed_forward.w1.weight"].float()
    assert abs(w.std().item() - 0.02) < 0.002 and abs(w.mean().item()) < 0.002


def codes(report) -> set[str]:
    return {p.code for p in report.problems}


def test_llama1_style_has_rope_freqs_and_vocab_minus_one(tmp_path):
    cfg = ModelConfig(dim=64, n_layers=1, n_heads=4, multiple_of=32, norm_eps=1e-6, vocab_size=-1)
    ckpt = write_random_checkpoint(tmp_path / "c", cfg, mp=2, dtype="fp16", vocab=512, with_rope_freqs=True,
                                   fill="zeros", checklist=False)
    assert json.loads((ckpt / "params.json").read_text())["vocab_size"] == -1
    sd = load_shard(ckpt / "consolidated.01.pth")
    assert sd["rope.freqs"].dtype == torch.float32 and sd["rope.freqs"].shape == (8,)
    assert sd["output.weight"].dtype == torch.float16 and not sd["output.weight"].any()
    assert not (ckpt / "checklist.chk").exists()


def test_same_seed_same_bytes(tmp_path):
    a = write_random_checkpoint(tmp_path / "a", SMALL, vocab=1000, seed=3)
    b = write_random_checkpoint(tmp_path / "b", SMALL, vocab=1000, seed=3)
    assert (a / "checklist.chk").read_text() == (b / "checklist.chk").read_text()


def test_refuses_bad_mp_and_non_empty_folder(tmp_path):
    with pytest.raises(LlamakitError, match="MP 3"):
        write_random_checkpoint(tmp_path / "x", SMALL, mp=3, vocab=1000)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    with pytest.raises(LlamakitError, match="not empty"):
        write_random_checkpoint(tmp_path / "full", SMALL, vocab=1000)


def test_command_line_entry(tmp_path, capsys):
    # The real use is `--preset llama2-7b` on the GPU machine; here a bad MP shows the clean error path.
    assert main([str(tmp_path / "x"), "--preset", "llama2-7b", "--mp", "3", "--device", "cpu"]) == 2
    assert "error: MP 3 does not split this shape evenly" in capsys.readouterr().err
