"""Shard discovery, lazy loading, split layout and merge/split round trips; every checkpoint error is named."""

from __future__ import annotations

import json

import pytest
import torch

from llamakit.checkpoint.layout import merge_tensors, split_dim, split_tensor
from llamakit.checkpoint.shards import find_shards, load_shard, open_checkpoint
from llamakit.errors import LlamakitError


def test_split_layout_matches_meta_parallel_layers():
    assert split_dim("tok_embeddings.weight") == 1  # ParallelEmbedding splits the embedding dim
    assert split_dim("output.weight") == 0
    assert split_dim("layers.3.attention.wq.weight") == 0 and split_dim("layers.3.attention.wo.weight") == 1
    assert split_dim("layers.0.feed_forward.w1.weight") == 0 and split_dim("layers.0.feed_forward.w2.weight") == 1
    assert split_dim("rope.freqs") is None and split_dim("layers.9.ffn_norm.weight") is None


@pytest.mark.parametrize("style", ["llama1", "llama2", "llama2-gqa"])
def test_mp1_and_mp2_hold_the_same_weights(tiny_factory, style):
    one, two = open_checkpoint(tiny_factory(style, 1)), open_checkpoint(tiny_factory(style, 2))
    assert (one.mp, two.mp) == (1, 2)
    full, parts = one.load(0), [two.load(0), two.load(1)]
    assert set(full) == set(parts[0])
    for key, tensor in full.items():
        assert torch.equal(merge_tensors(key, [p[key] for p in parts]), tensor), key
        for a, b in zip(split_tensor(key, tensor, 2), parts):
            assert torch.equal(a, b[key]), key
    assert one.has_rope_freqs == (style == "llama1")


def test_split_then_merge_between_any_mps():
    full = torch.arange(48.0).reshape(12, 4)
    for n in (1, 2, 3, 4, 6, 12):
        assert torch.equal(merge_tensors("output.weight", split_tensor("output.weight", full, n)), full)
        assert torch.equal(merge_tensors("layers.0.attention.wo.weight",
                                         split_tensor("layers.0.attention.wo.weight", full.T.contiguous(), n)),
                           full.T)


def test_shards_load_lazily_memory_mapped(tmp_path):
    psutil = pytest.importorskip("psutil")
    big = tmp_path / "consolidated.00.pth"
    torch.save({"output.weight": torch.ones(64 * 1024 * 1024 // 4 * 4)}, big)  # 256 MiB on disk
    proc = psutil.Process()
    before = proc.memory_info().rss
    sd = load_shard(big)
    assert sd["output.weight"].shape[0] == 64 * 1024 * 1024
    assert proc.memory_info().rss - before < 32 * 1024 * 1024  # nothing read until a tensor is touched
    assert float(sd["output.weight"][-1]) == 1.0


def test_missing_dir_and_file_instead_of_dir(tmp_path):
    with pytest.raises(LlamakitError, match="does not exist"):
        find_shards(tmp_path / "nope")
    (tmp_path / "f").write_text("x")
    with pytest.raises(LlamakitError, match="is a file"):
        find_shards(tmp_path / "f")


def test_hf_checkpoint_is_recognised(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"")
    with pytest.raises(LlamakitError, match="Hugging Face"):
        find_shards(tmp_path)


def test_empty_dir_says_what_is_there(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(LlamakitError, match="notes.txt"):
        find_shards(tmp_path)


def test_gap_in_shard_numbers(tiny_copy):
    ckpt = tiny_copy("llama2", 4)
    (ckpt / "consolidated.02.pth").unlink()
    with pytest.raises(LlamakitError, match="consolidated.02.pth"):
        find_shards(ckpt)


def test_truncated_shard_is_named(tiny_copy):
    ckpt = tiny_copy("llama2", 2)
    path = ckpt / "consolidated.01.pth"
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(LlamakitError) as e:
        open_checkpoint(ckpt)
    assert "consolidated.01.pth" in e.value.one_line() and "truncated" in e.value.fix


def test_inconsistent_shards(tiny_copy, tiny_factory):
    ckpt = tiny_copy("llama2", 2)
    sd = load_shard(ckpt / "consolidated.01.pth")
    sd = {k: v.clone() for k, v in sd.items()}
    sd["layers.0.attention.wq.weight"] = sd["layers.0.attention.wq.weight"][:-1].clone()
    torch.save(sd, ckpt / "consolidated.01.pth")
    with pytest.raises(LlamakitError, match="shape"):
        open_checkpoint(ckpt)
    del sd["layers.0.attention.wq.weight"]
    torch.save(sd, ckpt / "consolidated.01.pth")
    with pytest.raises(LlamakitError, match="keys differ"):
        open_checkpoint(ckpt)


def test_foreign_keys_are_rejected(tiny_copy):
    ckpt = tiny_copy("llama2", 1)
    sd = {k: v.clone() for k, v in load_shard(ckpt / "consolidated.00.pth").items()}  # no mmap: we overwrite it
    sd["model.embed_tokens.weight"] = torch.zeros(2, 2)
    torch.save(sd, ckpt / "consolidated.00.pth")
    with pytest.raises(LlamakitError, match="not LLaMA weights"):
        open_checkpoint(ckpt)


def test_make_tiny_writes_meta_layout(tiny_factory):
    ckpt = tiny_factory("llama1", 2)
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == ["checklist.chk", "consolidated.00.pth", "consolidated.01.pth", "params.json", "tokenizer.model"]
    assert json.loads((ckpt / "params.json").read_text())["vocab_size"] == -1
    lines = (ckpt / "checklist.chk").read_text().splitlines()
    assert [line.split()[1] for line in lines] == ["consolidated.00.pth", "consolidated.01.pth", "params.json"]
    ck = open_checkpoint(ckpt)
    assert ck.dtypes[0]["layers.0.attention.wq.weight"] == torch.float16  # LLaMA-1 ships fp16
    assert ck.vocab_rows == 512


def test_make_tiny_cli_lists_every_style():
    from llamakit.checkpoint.tiny import STYLES
    from llamakit.cli.cmd_tiny import STYLES as CLI_STYLES

    assert CLI_STYLES == tuple(STYLES)
    assert STYLES["llama2-kv8"].allowed_mp(512) == [1, 2, 4, 8]  # the one style that splits 8 ways, like 70B
