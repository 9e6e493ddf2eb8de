"""The paged KV cache: fixed-size blocks of keys/values that sequences hold as they grow (see engine.block_manager)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from llamakit.memory import kv_dtype
from llamakit.model.kernels import FP8, to_cache

# kv_cache_dtype (vLLM's key and values): "auto" keeps the model's dtype; "fp8" / "fp8_e4m3" stores e4m3 bytes,
# half the memory of bf16 and half the bytes a decode step reads
KV_CACHE_DTYPES = ("auto", "fp8", "fp8_e4m3")


def cache_dtype(kv_cache_dtype: str, model_dtype: torch.dtype) -> torch.dtype:
    """The cache's torch dtype: FP8 where memory.kv_dtype (the one home of what kv_cache_dtype means) names fp8,
    else the model's."""
    return FP8 if kv_dtype(str(model_dtype), kv_cache_dtype) == "fp8" else model_dtype


class KVCache:
    """Keys/values [n_layers, n_blocks, n_kv_heads, block_size, head_dim] for this rank's kv heads, in the model's
    dtype or fp8 (cache_dtype): written rounded to it, read back exactly.

    A sequence's positions live in the blocks of its row of a block table [B, max_blocks] (int32): position p is
    at (table[b, p // block_size], p % block_size). Block 0 is scratch: padding writes there, nothing reads it.
    """

    def __init__(self, n_layers: int, n_blocks: int, block_size: int, n_kv_heads: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layers, n_blocks, n_kv_heads, block_size, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.n_blocks = n_blocks
        self.block_size = block_size

    @staticmethod
    def bytes_per_block(n_layers: int, n_kv_heads: int, block_size: int, head_dim: int, dtype: torch.dtype) -> int:
        elt = torch.empty((), dtype=dtype).element_size()
        return 2 * n_layers * n_kv_heads * block_size * head_dim * elt

    def where(self, table: torch.Tensor, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(block, offset) of positions `pos` [B, ...] in rows of `table` [B, max_blocks]."""
        idx = (pos // self.block_size).reshape(pos.shape[0], -1).long()
        blk = torch.gather(table.long(), 1, idx).reshape(pos.shape)
        return blk, pos % self.block_size

    def write_decode(self, layer: int, table: torch.Tensor, pos: torch.Tensor, k: torch.Tensor,
                     v: torch.Tensor) -> None:
        """Store one k/v [B, H, D] per row at its position pos [B]."""
        blk, off = self.where(table, pos)
        self.k[layer][blk, :, off] = to_cache(k, self.k)
        self.v[layer][blk, :, off] = to_cache(v, self.v)

    def gather(self, layer: int, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys/values of the blocks in `table` [B, nb], laid out [B, H, nb * block_size, D] (plain path)."""
        b, nb = table.shape

        def flat(x: torch.Tensor) -> torch.Tensor:
            g = x[layer][table.long()]  # [B, nb, H, bs, D]
            return g.transpose(1, 2).reshape(b, g.shape[2], nb * self.block_size, g.shape[-1])

        return flat(self.k), flat(self.v)

    def attend(self, layer: int, q: torch.Tensor, table: torch.Tensor, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        """Attention of q [B, H, D] (one query per row) over keys 0..pos[b] of row b; returns [B, H, D]."""
        nb = -(-kv_len // self.block_size)
        k, v = self.gather(layer, table[:, :nb])
        return sdpa_decode(q, k.to(q.dtype), v.to(q.dtype), pos, nb * self.block_size)


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Reference decode attention through SDPA with a length mask over the first kv_len positions."""
    keys, values = k[:, :, :kv_len], v[:, :, :kv_len]
    mask = torch.arange(kv_len, device=q.device)[None, :] <= pos[:, None]  # [B, L]
    o = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask[:, None, None, :],
                                       enable_gqa=q.shape[1] != k.shape[1])
    return o.squeeze(2)
