"""`make-tiny`: writes a complete Meta-format checkpoint of a tiny shape (random weights + trained tokenizer)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from llamakit.checkpoint.checklist import write_checklist
from llamakit.checkpoint.layout import expected_shapes, split_tensor
from llamakit.checkpoint.params import ModelConfig
from llamakit.checkpoint.tiny_bpe import write_tiny_tiktoken
from llamakit.data import asset_path
from llamakit.checkpoint.shards import new_checkpoint_dir
from llamakit.errors import LlamakitError

TINY_VOCAB = 512
TINY_LLAMA3_VOCAB = 640  # tiny tiktoken tokenizer: 384 base tokens + Meta's 256 specials
_LLAMA3 = dict(dim=128, n_layers=2, n_heads=16, n_kv_heads=8, multiple_of=64, ffn_dim_multiplier=1.3, norm_eps=1e-5,
               rope_theta=500000.0, vocab_size=TINY_LLAMA3_VOCAB)
STYLES: dict[str, ModelConfig] = {
    # LLaMA-1: vocab_size -1 in params.json, rope.freqs stored in every shard, fp16 on disk.
    "llama1": ModelConfig(dim=64, n_layers=2, n_heads=4, multiple_of=32, norm_eps=1e-6, vocab_size=-1),
    # Llama-2 7B/13B style: vocab_size set, no rope.freqs, bf16 on disk.
    "llama2": ModelConfig(dim=64, n_layers=2, n_heads=4, multiple_of=32, norm_eps=1e-5, vocab_size=TINY_VOCAB),
    # Llama-2 70B style: grouped-query attention (4 query heads per kv head), ffn_dim_multiplier.
    "llama2-gqa": ModelConfig(dim=128, n_layers=2, n_heads=16, n_kv_heads=4, multiple_of=64,
                              ffn_dim_multiplier=1.3, norm_eps=1e-5, vocab_size=TINY_VOCAB),
    # Llama-2 70B as Meta ships it (MP 8): 8 kv heads, so each of 8 ranks holds exactly one kv head.
    "llama2-kv8": ModelConfig(dim=128, n_layers=2, n_heads=16, n_kv_heads=8, multiple_of=64,
                              ffn_dim_multiplier=1.3, norm_eps=1e-5, vocab_size=TINY_VOCAB),
    # Llama 3 (8B/70B shape family): tiktoken tokenizer, rope_theta 500000, 8 kv heads, vocab-parallel embedding.
    "llama3": ModelConfig(**_LLAMA3),
    # Llama 3.1: the same plus use_scaled_rope (Meta's apply_scaling of the rotary frequencies).
    "llama3.1": ModelConfig(**_LLAMA3, use_scaled_rope=True),
}


def style_vocab(style: str) -> int:
    """Vocabulary size of a tiny style's tokenizer (= its embedding rows)."""
    return TINY_LLAMA3_VOCAB if STYLES[style].llama3_family else TINY_VOCAB


def train_tokenizer(out_path: Path, vocab_size: int = TINY_VOCAB, corpus: Path | None = None) -> None:
    """Train a SentencePiece BPE model with Meta's ids (unk 0, bos 1, eos 2, no pad) on the bundled text."""
    import sentencepiece as spm

    corpus = corpus or asset_path("corpus.txt")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=str(corpus), model_writer=model, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, byte_fallback=True, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        num_threads=1, hard_vocab_limit=True, minloglevel=2, split_digits=True,
    )
    out_path.write_bytes(model.getvalue())


def random_state_dict(config: ModelConfig, vocab_size: int, seed: int, with_rope_freqs: bool) -> dict[str, torch.Tensor]:
    """Full (MP=1) weights: linear weights ~ N(0, 1/fan_in) so logits are peaked and greedy has no near-ties."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, shape in expected_shapes(config, vocab_size, 1, with_rope_freqs).items():
        if key == "rope.freqs":
            hd = config.head_dim
            sd[key] = 1.0 / (config.rope_theta ** (torch.arange(0, hd, 2)[: hd // 2].float() / hd))
        elif key.endswith("norm.weight"):
            sd[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif key == "tok_embeddings.weight":
            sd[key] = torch.randn(shape, generator=g)
        else:
            sd[key] = torch.randn(shape, generator=g) / shape[1] ** 0.5
    return sd


def make_tiny(out_dir: str | Path, mp: int = 1, style: str = "llama2", seed: int = 0) -> Path:
    """Write a tiny checkpoint (params.json, consolidated.NN.pth x mp, tokenizer.model, checklist.chk)."""
    if style not in STYLES:
        raise LlamakitError(f"unknown style {style!r}", f"use one of: {', '.join(STYLES)}")
    config, vocab = STYLES[style], style_vocab(style)
    if mp not in config.allowed_mp(vocab) or mp > 8:
        allowed = [m for m in config.allowed_mp(vocab) if m <= 8]
        raise LlamakitError(f"--mp {mp} does not divide the {style} tiny shape", f"use one of {allowed}")
    out = new_checkpoint_dir(out_dir)
    if config.llama3_family:
        written = write_tiny_tiktoken(out / "tokenizer.model")
        assert written == vocab, (written, vocab)  # the bundled corpus fixes the merges
    else:
        train_tokenizer(out / "tokenizer.model")
    llama1 = style == "llama1"
    full = random_state_dict(config, vocab, seed, with_rope_freqs=llama1)
    dtype = torch.float16 if llama1 else torch.bfloat16
    shards: list[dict[str, torch.Tensor]] = [{} for _ in range(mp)]
    for key, tensor in full.items():  # Llama 3 as Meta: the embedding split by vocabulary
        for i, part in enumerate(split_tensor(key, tensor, mp, vocab_parallel=config.llama3_family)):
            shards[i][key] = part.clone() if key == "rope.freqs" else part.to(dtype).clone()
    for i, sd in enumerate(shards):
        torch.save(sd, out / f"consolidated.{i:02d}.pth")
    (out / "params.json").write_text(json.dumps(config.to_params_json()))
    write_checklist(out)
    return out
