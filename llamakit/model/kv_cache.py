"""The KV cache: one slot per running sequence, sized up front; decode reads only the first `kv_len` positions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


class KVCache:
    """Keys/values [n_layers, n_slots, n_kv_heads, max_seq_len, head_dim] for this rank's kv heads.

    Running sequences occupy slots 0..B-1 (the engine compacts them), so a decode step reads a plain view
    `[:B, :, :kv_len]` with no gather; a finished slot is refilled from the queue or filled by moving the last one.
    """

    def __init__(self, n_layers: int, n_slots: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (n_layers, n_slots, n_kv_heads, max_seq_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.n_slots = n_slots
        self.max_seq_len = max_seq_len
        self.decode_attention = sdpa_decode  # the plain path; decode_fast calls llamakit.model.kernels itself

    @staticmethod
    def bytes_needed(n_layers: int, n_slots: int, n_kv_heads: int, max_seq_len: int, head_dim: int,
                     dtype: torch.dtype) -> int:
        elt = torch.empty((), dtype=dtype).element_size()
        return 2 * n_layers * n_slots * n_kv_heads * max_seq_len * head_dim * elt

    def write_prefill(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store k/v [B, T, H, D] of whole prompts at positions 0..T-1 of `slots` [B]."""
        t = k.shape[1]
        pos = torch.arange(t, device=k.device)
        self.k[layer][slots[:, None], :, pos[None, :]] = k
        self.v[layer][slots[:, None], :, pos[None, :]] = v

    def write_decode(self, layer: int, pos: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store one k/v [B, H, D] per slot 0..B-1 at its position pos [B]."""
        rows = torch.arange(k.shape[0], device=k.device)
        self.k[layer][rows, :, pos] = k
        self.v[layer][rows, :, pos] = v

    def attend(self, layer: int, q: torch.Tensor, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        """Attention of q [B, H, D] (one query per slot) over keys 0..pos[b] of slot b; returns [B, H, D]."""
        b = q.shape[0]
        return self.decode_attention(q, self.k[layer][:b], self.v[layer][:b], pos, kv_len)

    def move_slot(self, src: int, dst: int, length: int) -> None:
        """Copy the first `length` positions of slot `src` into slot `dst` (compaction after a sequence ends)."""
        self.k[:, dst, :, :length] = self.k[:, src, :, :length]
        self.v[:, dst, :, :length] = self.v[:, src, :, :length]


def sdpa_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
    """Reference decode attention through SDPA with a length mask over the first kv_len positions."""
    keys, values = k[:, :, :kv_len], v[:, :, :kv_len]
    mask = torch.arange(kv_len, device=q.device)[None, :] <= pos[:, None]  # [B, L]
    o = F.scaled_dot_product_attention(q.unsqueeze(2), keys, values, attn_mask=mask[:, None, None, :],
                                       enable_gqa=q.shape[1] != k.shape[1])
    return o.squeeze(2)
