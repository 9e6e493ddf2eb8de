"""Llama 3 / 3.1 original-format checkpoints: params.json keys, published shapes, tiktoken tokenizer detected from
the file, vocab-parallel embedding layout, Llama 3.1's rope scaling against HF's own implementation."""

from __future__ import annotations

import base64
import json

import pytest
import torch

from llamakit.checkpoint.layout import merge_tensors, split_dim
from llamakit.checkpoint.params import PRESETS, config_from_dict, identify
from llamakit.checkpoint.shards import open_checkpoint
from llamakit.errors import LlamakitError
from llamakit.inspection import inspect_checkpoint
from llamakit.model.llama import rope_tables
from llamakit.tokenizer import Tokenizer, tokenizer_kind

# Meta's params.json of Llama 3.1 8B as shipped ("original" folder); Llama 3 8B lacks use_scaled_rope.
LLAMA31_8B = {"dim": 4096, "ffn_dim_multiplier": 1.3, "multiple_of": 1024, "n_heads": 32, "n_kv_heads": 8,
              "n_layers": 32, "norm_eps": 1e-05, "rope_theta": 500000.0, "use_scaled_rope": True, "vocab_size": 128256}


def test_llama31_params_json_is_read_and_named():
    cfg = config_from_dict(LLAMA31_8B)
    assert cfg.use_scaled_rope and cfg.rope_theta == 500000.0 and cfg.kv_heads == 8 and cfg.ffn_hidden == 14336
    assert identify(cfg) == "Llama 3.1 8B"
    assert identify(config_from_dict({k: v for k, v in LLAMA31_8B.items() if k != "use_scaled_rope"})) == "Llama 3 8B"
    assert cfg.to_params_json() == LLAMA31_8B
    with pytest.raises(LlamakitError, match="use_scaled_rope"):
        config_from_dict({**LLAMA31_8B, "use_scaled_rope": "yes"})


@pytest.mark.parametrize("name,count,label", [
    ("llama3-8b", 8_030_261_248, "Llama 3 8B"), ("llama3.1-8b", 8_030_261_248, "Llama 3.1 8B"),
    ("llama3-70b", 70_553_706_496, "Llama 3 70B"), ("llama3.1-70b", 70_553_706_496, "Llama 3.1 70B")])
def test_published_llama3_shapes_have_meta_parameter_counts(name, count, label):
    cfg = PRESETS[name]
    assert cfg.param_count() == count and identify(cfg) == label
    # 8 kv heads: MP beyond 8 is refused (llamakit does not repeat kv heads across ranks)
    assert cfg.allowed_mp() == [1, 2, 4, 8]


def test_tiny_llama3_tokenizer_is_meta_tiktoken_format(tiny_factory):
    ckpt = tiny_factory("llama3", 1)
    lines = (ckpt / "tokenizer.model").read_text().splitlines()
    assert [ln.split()[1] for ln in lines] == [str(i) for i in range(len(lines))]
    assert base64.b64decode(lines[65].split()[0]) == b"A"  # the 256 single bytes first, by value
    tok = Tokenizer(ckpt / "tokenizer.model")
    assert tok.kind == "tiktoken" and tok.n_words == 640 == len(lines) + 256
    assert (tok.bos_id, tok.eos_id) == (384, 385)  # <|begin_of_text|>, <|end_of_text|> follow the base vocabulary
    assert tok.special["<|start_header_id|>"] == 390 and tok.special["<|eot_id|>"] == 393
    assert tok.stop_ids == {385, 392, 393}  # end_of_text, eom, eot
    text = "Die Bürgermeisterin kündigte an: Straße, é, 😀 <|eot_id|>"
    ids = tok.encode(text)
    assert ids[0] == 384 and not set(ids[1:]) & set(tok.special.values())  # special text stays text
    assert tok.decode(ids[1:]) == text and tok.decode(ids[1:] + [393] + ids[1:]) == text
    assert Tokenizer(tiny_factory("llama2", 1) / "tokenizer.model").kind == "sentencepiece"


def test_tokenizer_kind_comes_from_content_not_name(tmp_path, tiny_factory):
    odd = tmp_path / "something.bin"
    odd.write_bytes((tiny_factory("llama3", 1) / "tokenizer.model").read_bytes())
    assert tokenizer_kind(odd) == "tiktoken"
    bad = tmp_path / "tokenizer.model"
    bad.write_text("QUE= 0\nnot base64 1\n")
    with pytest.raises(LlamakitError, match="SentencePiece model or tiktoken"):
        Tokenizer(bad)


def test_llama3_embedding_is_split_by_vocabulary_like_meta(tiny_factory):
    one, two = open_checkpoint(tiny_factory("llama3", 1)), open_checkpoint(tiny_factory("llama3", 2))
    assert two.vocab_parallel and one.vocab_parallel
    assert two.shapes[0]["tok_embeddings.weight"] == (320, 128)  # VocabParallelEmbedding: rows split
    assert two.vocab_rows == one.vocab_rows == 640
    full, parts = one.load(0), [two.load(i) for i in range(2)]
    for key in full:
        assert torch.equal(merge_tensors(key, [p[key] for p in parts], two.vocab_parallel), full[key]), key
    assert split_dim("tok_embeddings.weight", vocab_parallel=True) == 0
    assert not open_checkpoint(tiny_factory("llama2-gqa", 2)).vocab_parallel  # LLaMA-1/2: ParallelEmbedding


def test_llama31_params_as_meta_writes_them(tiny_factory):
    params = json.loads((tiny_factory("llama3.1", 1) / "params.json").read_text())
    assert params["use_scaled_rope"] is True and params["rope_theta"] == 500000.0 and params["vocab_size"] == 640


@pytest.mark.parametrize("head_dim", [8, 128])
def test_scaled_rope_equals_hf_llama3_rope_type(head_dim):
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    hf = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, rope_theta=500000.0,
                     max_position_embeddings=131072,
                     rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                   "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
    inv_freq, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, torch.device("cpu"))
    cos, sin = rope_tables(head_dim, 4, 500000.0, scaled=True)
    assert torch.allclose(torch.atan2(sin[1], cos[1]), inv_freq.float(), rtol=1e-6, atol=0)
    plain_cos, _ = rope_tables(head_dim, 4, 500000.0)
    assert not torch.equal(plain_cos, cos)  # the low frequencies really are scaled


def _shape_only_checkpoint(folder, config, mp):
    """Meta's files of a full-size shape with every tensor a stride-0 view of one element: torch.save stores one
    element per tensor, so the shards take kilobytes while their shapes are the real ones (all inspect reads)."""
    from llamakit.checkpoint.layout import expected_shapes

    folder.mkdir()
    one = torch.zeros(1, dtype=torch.bfloat16)
    shapes = expected_shapes(config, config.vocab_size, mp)  # Llama 3: the embedding split by vocabulary
    for rank in range(mp):
        torch.save({k: one.expand(*s) for k, s in shapes.items()}, folder / f"consolidated.{rank:02d}.pth")
    (folder / "params.json").write_text(json.dumps(config.to_params_json()))
    return folder


@pytest.mark.parametrize("name,mp,label,count", [
    ("llama3-8b", 1, "Llama 3 8B", 8_030_261_248), ("llama3.1-8b", 1, "Llama 3.1 8B", 8_030_261_248),
    ("llama3-70b", 8, "Llama 3 70B", 70_553_706_496), ("llama3.1-70b", 8, "Llama 3.1 70B", 70_553_706_496)])
def test_inspect_names_meta_llama3_folders_with_exact_counts(tmp_path, name, mp, label, count):
    folder = _shape_only_checkpoint(tmp_path / f"Meta-{name}-Instruct", PRESETS[name], mp)
    r = inspect_checkpoint(folder, gpus=[])
    assert (r.model.name, r.model.param_count, r.model.vocab_size) == (label, count, 128256)
    assert r.shards.matches_params and r.shards.split["tok_embeddings.weight"] == 0  # vocab-parallel
    assert r.model.allowed_mp == [1, 2, 4, 8]
    assert "looks like a chat model" in r.model.chat and "llama3-instruct" in r.model.chat
    assert [p.code for p in r.problems] == ["tokenizer-missing"]


def test_inspect_tiny_llama3_reports_tokenizer_and_cannot_tell_chat(tiny_factory):
    r = inspect_checkpoint(tiny_factory("llama3", 2), gpus=[])
    assert r.ok and r.model.vocab_size == 640 and r.model.param_count == r.model.param_count_params
    assert r.shards.split["tok_embeddings.weight"] == 0 and r.shards.split["output.weight"] == 0
    assert (r.tokenizer.kind, r.tokenizer.stop_ids, r.tokenizer.matches_embedding) == ("tiktoken", [385, 392, 393], True)
    assert r.model.chat.startswith("cannot tell")


@pytest.mark.parametrize("mp_in,mp_out", [(8, 2), (1, 2)])
def test_reshard_keeps_the_vocab_parallel_layout_and_every_weight(tiny_factory, tmp_path, mp_in, mp_out):
    from llamakit.checkpoint.reshard import allowed_mp, reshard

    src = tiny_factory("llama3.1", mp_in)
    out = open_checkpoint(reshard(src, tmp_path / "out", mp_out).dst)
    assert out.vocab_parallel and out.shapes[0]["tok_embeddings.weight"] == (640 // mp_out, 128)
    ref = open_checkpoint(tiny_factory("llama3.1", 1)).load(0)
    parts = [out.load(i) for i in range(mp_out)]
    for key in ref:
        assert torch.equal(merge_tensors(key, [p[key] for p in parts], True), ref[key]), key
    assert allowed_mp(out) == [1, 2, 4, 8]  # 8 kv heads: kv heads are never repeated across ranks
    with pytest.raises(LlamakitError, match="use one of: 1, 2, 4, 8"):
        reshard(src, tmp_path / "mp16", 16)


def test_int8_llama3_quantizes_linear_layers_and_keeps_first_tokens(tiny_factory, mp1_group):
    from llamakit.engine.api import EngineConfig, Request
    from llamakit.engine.engine import build_engine

    ckpt = tiny_factory("llama3", 1)
    tok = Tokenizer(ckpt / "tokenizer.model")
    reqs = [Request(i, tok.encode(p), 4) for i, p in enumerate(["The city council", "Researchers at the", "A"])]
    out = {}
    for q in ("none", "int8"):
        eng = build_engine(open_checkpoint(ckpt), EngineConfig(max_seq_len=64, max_batch_size=3, quantize=q))
        out[q] = {c.request.key: c.tokens[:2] for c in eng.generate(reqs)}
    assert eng.runner.model.output.weight.dtype == torch.int8  # the 128K-row head in llama3 is the big one
    assert sum(out["none"][k] == out["int8"][k] for k in out["none"]) >= 2


def test_memory_plan_70b_int8_on_two_48gb_and_8b_as_replicas():
    from llamakit.memory import GiB, plan_memory

    seventy, eight = PRESETS["llama3.1-70b"], PRESETS["llama3-8b"]
    assert plan_memory(seventy, 128256, 2, "bf16", 8, 2048).weights > 48 * GiB
    assert plan_memory(seventy, 128256, 2, "int8", 8, 2048).total < 45 * GiB
    assert plan_memory(eight, 128256, 1, "bf16", 8, 2048).total < 22 * GiB  # one replica per 48 GB GPU
