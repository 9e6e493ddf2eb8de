"""Which tensor of a Meta checkpoint is split along which dimension across model-parallel shards."""

from __future__ import annotations

import re

import torch

# Meta's model.py: ColumnParallelLinear splits dim 0 (outputs), RowParallelLinear dim 1 (inputs). The embedding
# depends on the generation: LLaMA-1/2 use ParallelEmbedding (split on the embedding dim, 1), Llama 3 uses
# VocabParallelEmbedding (split on the vocabulary, 0); see embedding_split. Norms and rope.freqs are replicated.
EMBEDDING = "tok_embeddings.weight"
_RULES: list[tuple[re.Pattern[str], int | None]] = [
    (re.compile(r"^tok_embeddings\.weight$"), 1),
    (re.compile(r"^output\.weight$"), 0),
    (re.compile(r"^norm\.weight$"), None),
    (re.compile(r"^rope\.freqs$"), None),
    (re.compile(r"^layers\.\d+\.attention\.w[qkv]\.weight$"), 0),
    (re.compile(r"^layers\.\d+\.attention\.wo\.weight$"), 1),
    (re.compile(r"^layers\.\d+\.feed_forward\.w[13]\.weight$"), 0),
    (re.compile(r"^layers\.\d+\.feed_forward\.w2\.weight$"), 1),
    (re.compile(r"^layers\.\d+\.(attention_norm|ffn_norm)\.weight$"), None),
]


# The 16/32-bit weight dtypes by the names recipes, params and the CLI use.
DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class UnknownKey(KeyError):
    """A key that is not part of the Meta LLaMA layout."""


def embedding_split(config, shard_shape: tuple[int, ...] | None, mp: int) -> bool:
    """True when the embedding is vocab-parallel (Llama 3). With several shards the shapes say it (a shard holds
    all `dim` columns); one shard holds the whole table, so the model generation decides (what a reshard writes)."""
    if mp > 1 and shard_shape is not None and len(shard_shape) == 2:
        return shard_shape[1] == config.dim
    return config.llama3_family


def split_dim(key: str, vocab_parallel: bool = False) -> int | None:
    """Return the dimension `key` is split on across shards, or None if every shard holds a full copy."""
    if key == EMBEDDING:
        return 0 if vocab_parallel else 1
    for pattern, dim in _RULES:
        if pattern.match(key):
            return dim
    raise UnknownKey(key)


def is_known(key: str) -> bool:
    return any(p.match(key) for p, _ in _RULES)


def expected_shapes(config, vocab_size: int, mp: int, with_rope_freqs: bool = False,
                    vocab_parallel: bool | None = None) -> dict[str, tuple[int, ...]]:
    """Per-shard shape of every key for this config at model-parallel size `mp` (what a shard must hold)."""
    d, hd, kv, hid = config.dim, config.head_dim, config.kv_heads, config.ffn_hidden
    full: dict[str, tuple[int, ...]] = {
        "tok_embeddings.weight": (vocab_size, d),
        "norm.weight": (d,),
        "output.weight": (vocab_size, d),
    }
    if with_rope_freqs:
        full["rope.freqs"] = (hd // 2,)
    for i in range(config.n_layers):
        p = f"layers.{i}."
        full[p + "attention.wq.weight"] = (config.n_heads * hd, d)
        full[p + "attention.wk.weight"] = (kv * hd, d)
        full[p + "attention.wv.weight"] = (kv * hd, d)
        full[p + "attention.wo.weight"] = (d, config.n_heads * hd)
        full[p + "feed_forward.w1.weight"] = (hid, d)
        full[p + "feed_forward.w2.weight"] = (d, hid)
        full[p + "feed_forward.w3.weight"] = (hid, d)
        full[p + "attention_norm.weight"] = (d,)
        full[p + "ffn_norm.weight"] = (d,)
    vp = config.llama3_family if vocab_parallel is None else vocab_parallel
    out = {}
    for key, shape in full.items():
        dim = split_dim(key, vp)
        if dim is None:
            out[key] = shape
        else:
            s = list(shape)
            s[dim] //= mp
            out[key] = tuple(s)
    return out


def merge_tensors(key: str, parts: list[torch.Tensor], vocab_parallel: bool = False) -> torch.Tensor:
    """Join one key's per-shard tensors into the full tensor (replicated keys: the first copy)."""
    dim = split_dim(key, vocab_parallel)
    if dim is None or len(parts) == 1:
        return parts[0]
    return torch.cat(parts, dim=dim)


def split_tensor(key: str, full: torch.Tensor, n: int, vocab_parallel: bool = False) -> list[torch.Tensor]:
    """Cut one full tensor into `n` per-shard tensors (contiguous copies; replicated keys are shared)."""
    dim = split_dim(key, vocab_parallel)
    if dim is None or n == 1:
        return [full] * n
    if full.shape[dim] % n:
        raise ValueError(f"{key}: size {full.shape[dim]} along dim {dim} is not divisible by {n}")
    return [t.contiguous() for t in torch.chunk(full, n, dim=dim)]
