"""The LLaMA transformer (LLaMA-1 and Llama-2, GQA included) on fairscale's model-parallel layers.

Meta's layout is kept (interleaved rotary pairs, the same key names); at load time wq/wk/wv are fused into
one column-parallel `wqkv` and w1/w3 into `w13`, so a layer runs 4 matmuls instead of 7. The KV cache is
passed in by the engine; the model has two entry points: `prefill` (whole prompts) and `decode` (one token
per running sequence), plus `decode_fast` (the same step through fused kernels). All three run the one layer
loop `Transformer._layers`; they differ only in how a layer attends and how residual-add + RMSNorm is computed.
For scoring, `hidden` runs whole texts without a KV cache and `logits_shard` gives this rank's vocabulary slice.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Callable, Iterator, Optional

import torch
import torch.nn.functional as F
from fairscale.nn.model_parallel import layers as fs_layers
from fairscale.nn.model_parallel.initialize import get_model_parallel_rank, get_model_parallel_world_size
from fairscale.nn.model_parallel.layers import (ColumnParallelLinear, ParallelEmbedding, RowParallelLinear,
                                                VocabParallelEmbedding)
from torch import nn

from llamakit.checkpoint.params import ModelConfig
from llamakit.model import kernels
from llamakit.model.kv_cache import KVCache
from llamakit.model.linear import INVARIANT_ROWS, linear, quantize_int8_


@contextlib.contextmanager
def _skip_fairscale_init() -> Iterator[None]:
    """Build fairscale layers without their random init: with MP>1 it would fill a full-size master weight
    per layer (tens of GB of garbage for 13B); the real weights are assigned right after from the shard."""
    original = fs_layers._initialize_affine_weight
    fs_layers._initialize_affine_weight = lambda *args, **kwargs: None
    try:
        yield
    finally:
        fs_layers._initialize_affine_weight = original


def _prefill_backends(device: torch.device):
    """On GPUs prefer flash / memory-efficient attention: torch may pick cuDNN's, which builds a plan for
    every new prompt length (~0.2 s each on an H100, measured with `llamakit bench`)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


@functools.lru_cache(maxsize=1)
def _varlen_causal() -> Callable | None:
    """torch's flash attention over packed variable-length sequences, causal (torch >= 2.10), or None. A packed
    prefill then attends on its real tokens as they are: the right-padded copy for SDPA (a zero fill, an index
    copy there and a gather back) took 6.1 of a 48-prompt prefill's 67.6 ms (H200, 2026-11-30)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    causal = ({"window_size": (-1, 0)} if "window_size" in params  # torch >= 2.11
              else {"is_causal": True} if "is_causal" in params else None)  # torch 2.10
    if causal is None:
        return None

    def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, longest: int) -> torch.Tensor:
        gqa = {"enable_gqa": True} if "enable_gqa" in params and k.shape[1] != q.shape[1] else {}
        return varlen_attn(q, k, v, cu, cu, longest, longest, **causal, **gqa)

    return attend


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # As Meta: normalise in fp32, cast back, then scale.
        xf = x.float()
        out = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x)
        return out * self.weight


# Llama 3.1's frequency scaling (Meta's apply_scaling; HF rope_type "llama3"): factor 8, low/high frequency
# factors 1 and 4, original context 8192. Meta fixes them in code; params.json only says use_scaled_rope.
SCALED_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_context": 8192}


def scale_rope_freqs(freqs: torch.Tensor) -> torch.Tensor:
    """Llama 3.1: keep wavelengths under original/high_factor, divide those over original/low_factor by the factor,
    and blend linearly (in original/wavelength) in between."""
    f, lo, hi, ctx = (SCALED_ROPE[k] for k in ("factor", "low_freq_factor", "high_freq_factor", "original_context"))
    wavelen = 2 * torch.pi / freqs
    smooth = (ctx / wavelen - lo) / (hi - lo)
    blended = (1 - smooth) * freqs / f + smooth * freqs
    out = torch.where(wavelen > ctx / lo, freqs / f, blended)
    return torch.where(wavelen < ctx / hi, freqs, out)


def rope_tables(head_dim: int, max_pos: int, theta: float, scaled: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of Meta's rotary frequencies, [max_pos, head_dim // 2], fp32 (`scaled`: Llama 3.1's scaling)."""
    freqs = 1.0 / (theta ** (torch.arange(0, head_dim, 2)[: head_dim // 2].float() / head_dim))
    if scaled:
        freqs = scale_rope_freqs(freqs)
    angles = torch.outer(torch.arange(max_pos, dtype=torch.float32), freqs)
    return torch.cos(angles), torch.sin(angles)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs (x0,x1),(x2,x3)... of x [B, T, H, D] by cos/sin [B, T, D/2], in fp32 as Meta."""
    xf = x.float().unflatten(-1, (-1, 2))
    xr, xi = xf[..., 0], xf[..., 1]
    c, s = cos.unsqueeze(2), sin.unsqueeze(2)
    out = torch.stack((xr * c - xi * s, xr * s + xi * c), dim=-1)
    return out.flatten(-2).type_as(x)


class ColumnLinear(ColumnParallelLinear):
    """Column-parallel linear (no bias) whose matmul may be int8 weight-only (see llamakit.model.linear)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        x = fs_layers.copy_to_model_parallel_region(x)
        y = linear(x, self)
        return fs_layers.gather_from_model_parallel_region(y) if self.gather_output else y


class RowLinear(RowParallelLinear):
    """Row-parallel linear (input already split, output all-reduced) with the same pluggable matmul."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return fs_layers.reduce_from_model_parallel_region(linear(x, self))


PACK_MULTIPLE = 32  # a prefill computes a multiple of 32 tokens (padding permitting), on every device


class Packing:
    """Where the tokens a prefill computes sit among right-padded sequences (`lengths` [B], padded to T): `index`
    [N] their flat positions b * T + t, ascending (the real ones, plus the first padding positions that round N up
    to a multiple of `multiple` where the padding has them: the GEMMs and the int8 kernels then see a handful of row
    counts, not one per prompt length); `rows` / `pos` their sequence and position; `last` where each sequence's
    last real token is in `index`. A padding token writes its k/v at a position past its sequence's end (later
    overwritten by decode before it is read) or into the scratch block; attention never reads it. pad / unpad move
    [N, heads, D] tensors to [B, heads, T, D] and back. One host sync (the count)."""

    def __init__(self, lengths: torch.Tensor, t: int, multiple: int = 1):
        self.b, self.t = lengths.shape[0], t
        real = (torch.arange(t, device=lengths.device)[None, :] < lengths[:, None]).reshape(-1)
        n_real = int(lengths.sum())
        extra = min(-n_real % multiple, self.b * t - n_real)
        if extra:
            spare = ~real
            real = real | (spare & (torch.cumsum(spare, 0) <= extra))
        self.index = real.nonzero().squeeze(1)
        self.rows = self.index // t
        self.pos = self.index % t
        self.last = torch.searchsorted(self.index, torch.arange(self.b, device=lengths.device) * t + lengths - 1)

    @functools.cached_property
    def cu_seqlens(self) -> torch.Tensor:
        """[B + 1] int32 offsets of each sequence's tokens in `index` (a varlen attention's segments): they are its
        positions 0..n_b-1, since the rounding takes the padding positions right after a sequence's real ones."""
        return torch.searchsorted(self.index, torch.arange(self.b + 1, device=self.index.device) * self.t
                                  ).to(torch.int32)

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros((self.b * self.t,) + tuple(x.shape[1:])).index_copy_(0, self.index, x)
        return out.view(self.b, self.t, *x.shape[1:]).transpose(1, 2)

    def unpad(self, o: torch.Tensor) -> torch.Tensor:
        return o.transpose(1, 2).reshape(self.b * self.t, -1)[self.index]


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        mp = get_model_parallel_world_size()
        self.layer_id = layer_id
        self.n_heads = cfg.n_heads // mp
        self.n_kv = cfg.kv_heads // mp
        self.head_dim = cfg.head_dim
        qkv_out = (cfg.n_heads + 2 * cfg.kv_heads) * cfg.head_dim
        self.wqkv = ColumnLinear(cfg.dim, qkv_out, bias=False, gather_output=False, init_method=lambda w: w)
        self.wo = RowLinear(cfg.n_heads * cfg.head_dim, cfg.dim, bias=False, input_is_parallel=True,
                            init_method=lambda w: w)

    def _qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        b, t, _ = x.shape
        q, k, v = linear(x, self.wqkv).split(
            [self.n_heads * self.head_dim, self.n_kv * self.head_dim, self.n_kv * self.head_dim], dim=-1)
        q = apply_rope(q.view(b, t, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(k.view(b, t, self.n_kv, self.head_dim), cos, sin)
        v = v.view(b, t, self.n_kv, self.head_dim)
        return q, k, v

    def prefill(self, x, cos, sin) -> torch.Tensor:
        """Whole right-padded sequences x [B, T, dim] from position 0, no KV cache (scoring): causal attention in the
        chunk. cos/sin: the model's rotary tables [max_pos, head_dim / 2]."""
        b, t, _ = x.shape
        q, k, v = self._qkv(x, cos[:t][None], sin[:t][None])
        with _prefill_backends(x.device):
            o = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                               is_causal=True, enable_gqa=self.n_kv != self.n_heads)
        return self.wo(o.transpose(1, 2).reshape(b, t, -1))

    def prefill_packed(self, x, pack: "Packing", cos, sin, cache: KVCache, table: torch.Tensor,
                       invariant: bool = False) -> torch.Tensor:
        """The real tokens of several sequences x [N, dim] (no padding: the matmuls see only them), stored in their
        cache blocks; causal attention per sequence: on GPUs torch's flash varlen attention on the packed tokens,
        elsewhere SDPA on a right-padded [B, T] layout of q/k/v (pack.index); `invariant` (batch_invariant): each
        token through the decode-attention kernel, as its decode step would compute it."""
        n = x.shape[0]
        qkv = linear(x, self.wqkv)
        q, k = kernels.rope_packed(qkv, pack.pos, pack.rows, cos, sin, cache.k[self.layer_id], cache.v[self.layer_id],
                                   table, self.n_heads, self.n_kv)
        if invariant:  # batch_invariant: each token as a decode row over the keys just stored, as a decode step would
            o = kernels.decode_attention(q, cache.k[self.layer_id], cache.v[self.layer_id], table[pack.rows],
                                         pack.pos + 1, splits=1)
            return self.wo(o.reshape(n, -1))
        v = qkv[:, (self.n_heads + self.n_kv) * self.head_dim:].reshape(n, self.n_kv, self.head_dim)
        varlen = _varlen_causal() if x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) else None
        if varlen is not None:
            o = varlen(q, k, v, pack.cu_seqlens, pack.t)
            return self.wo(o.reshape(n, -1))
        with _prefill_backends(x.device):
            o = F.scaled_dot_product_attention(pack.pad(q), pack.pad(k), pack.pad(v), is_causal=True,
                                               enable_gqa=self.n_kv != self.n_heads)
        return self.wo(pack.unpad(o))

    def decode(self, x, cos, sin, cache: KVCache, table: torch.Tensor, pos: torch.Tensor, kv_len: int) -> torch.Tensor:
        """One token for each row at positions `pos` [B]; keys 0..pos of each row are read through its blocks."""
        b = x.shape[0]
        q, k, v = self._qkv(x, cos, sin)
        cache.write_decode(self.layer_id, table, pos, k[:, 0], v[:, 0])
        o = cache.attend(self.layer_id, q[:, 0], table, pos, kv_len)  # [B, H, D]
        return self.wo(o.reshape(b, 1, -1))

    def decode_fast(self, x, pos: torch.Tensor, lengths: torch.Tensor, order: torch.Tensor | None,
                    rope_cos: torch.Tensor, rope_sin: torch.Tensor, cache: KVCache, table: torch.Tensor,
                    splits: int | None) -> torch.Tensor:
        """`decode` through fused kernels: rotary fused with the paged cache write, attention over each row's own
        length (`lengths` = pos + 1; `order`: kernels.longest_first) through its block table (x [B, dim], no host
        sync, static shapes)."""
        b = x.shape[0]
        k_cache, v_cache = cache.k[self.layer_id], cache.v[self.layer_id]
        q = kernels.rope_store(self.wqkv(x), pos, rope_cos, rope_sin, k_cache, v_cache, table, self.n_heads,
                               self.n_kv)
        o = kernels.decode_attention(q, k_cache, v_cache, table, lengths, splits, order=order)
        return self.wo(o.reshape(b, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.ffn_hidden
        self.hidden_local = hidden // get_model_parallel_world_size()
        self.w13 = ColumnLinear(cfg.dim, 2 * hidden, bias=False, gather_output=False, init_method=lambda w: w)
        self.w2 = RowLinear(hidden, cfg.dim, bias=False, input_is_parallel=True, init_method=lambda w: w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(kernels.silu_mul(linear(x, self.w13), self.hidden_local))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.attention = Attention(cfg, layer_id)
        self.feed_forward = FeedForward(cfg)
        self.attention_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)

    def forward(self, h: torch.Tensor, delta: Optional[torch.Tensor], attend: "Attend",
                add_norm: "AddNorm") -> tuple[torch.Tensor, torch.Tensor]:
        """One layer on the residual stream h plus the previous layer's pending output `delta`; returns the new
        stream and this layer's feed-forward output, still to be added (so the add can fuse into the next norm)."""
        x, h = add_norm(h, delta, self.attention_norm)
        x, h = add_norm(h, attend(self.attention, x), self.ffn_norm)
        return h, self.feed_forward(x)


# How a layer attends (prefill, decode or fused decode) and how `h + delta` is added and normalised.
Attend = Callable[[Attention, torch.Tensor], torch.Tensor]
AddNorm = Callable[[torch.Tensor, Optional[torch.Tensor], RMSNorm], tuple[torch.Tensor, torch.Tensor]]


def add_norm_eager(h: torch.Tensor, delta: Optional[torch.Tensor], norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """(norm(h + delta), h + delta) with torch ops; delta None means nothing to add yet."""
    if delta is not None:
        h = h + delta
    return norm(h), h


def add_norm_fused(h: torch.Tensor, delta: Optional[torch.Tensor], norm: RMSNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """The same through one kernel (Triton on CUDA, its eager twin elsewhere)."""
    return kernels.add_rmsnorm(h, delta, norm.weight, norm.eps)


class Transformer(nn.Module):
    """LLaMA on fairscale layers; build with `Transformer.from_shard` (weights of this rank only)."""

    def __init__(self, cfg: ModelConfig, max_seq_len: int, vocab_parallel: bool = False):
        super().__init__()
        if cfg.vocab_size <= 0:
            raise ValueError("vocab_size must be known (fill it from the tokenizer / embedding rows)")
        self.cfg = cfg
        self.max_seq_len = max_seq_len
        with _skip_fairscale_init():
            # Llama 3 splits the embedding by vocabulary (VocabParallelEmbedding), LLaMA-1/2 by embedding dim.
            emb = VocabParallelEmbedding if vocab_parallel else ParallelEmbedding
            self.tok_embeddings = emb(cfg.vocab_size, cfg.dim, init_method=lambda w: w)
            self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
            self.output = ColumnLinear(cfg.dim, cfg.vocab_size, bias=False, init_method=lambda w: w)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        cos, sin = rope_tables(cfg.head_dim, max_seq_len, cfg.rope_theta, cfg.use_scaled_rope)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.batch_invariant = False  # make_batch_invariant

    @classmethod
    def from_shard(cls, cfg: ModelConfig, shard: dict[str, torch.Tensor], max_seq_len: int,
                   dtype: torch.dtype, device: torch.device | str, quantize: str = "none",
                   vocab_parallel: bool = False) -> "Transformer":
        """Build this rank's model from its Meta shard (mmap'd): fuse qkv and w1/w3, cast, move to device.
        With quantize="int8" each linear layer is quantized as soon as it is on the device, so the peak is the
        int8 model plus one layer in 16 bit (65B on two 48 GB GPUs). `vocab_parallel`: the shard's embedding is
        split by vocabulary (Llama 3; Checkpoint.vocab_parallel)."""
        model = cls(cfg, max_seq_len, vocab_parallel)
        model.load_meta_shard(shard, dtype, device, quantize)
        model.rope_cos = model.rope_cos.to(device)
        model.rope_sin = model.rope_sin.to(device)
        return model.eval()

    def load_meta_shard(self, shard: dict[str, torch.Tensor], dtype: torch.dtype, device,
                        quantize: str = "none") -> None:
        def put(module: nn.Module, name: str, tensor: torch.Tensor) -> None:
            old = getattr(module, name)
            if tuple(old.shape) != tuple(tensor.shape):
                raise ValueError(f"shape mismatch for {name}: model {tuple(old.shape)}, shard {tuple(tensor.shape)}")
            setattr(module, name, nn.Parameter(tensor.to(device=device, dtype=dtype), requires_grad=False))
            if quantize == "int8" and isinstance(module, (ColumnLinear, RowLinear)):
                quantize_int8_(module)

        def get(key: str) -> torch.Tensor:
            return shard[key].to(device)

        put(self.tok_embeddings, "weight", get("tok_embeddings.weight"))
        put(self.output, "weight", get("output.weight"))
        put(self.norm, "weight", get("norm.weight"))
        for i, blk in enumerate(self.layers):
            p = f"layers.{i}."
            wqkv = torch.cat([get(p + "attention.wq.weight"), get(p + "attention.wk.weight"),
                              get(p + "attention.wv.weight")], dim=0)
            put(blk.attention.wqkv, "weight", wqkv)
            put(blk.attention.wo, "weight", get(p + "attention.wo.weight"))
            w13 = torch.cat([get(p + "feed_forward.w1.weight"), get(p + "feed_forward.w3.weight")], dim=0)
            put(blk.feed_forward.w13, "weight", w13)
            put(blk.feed_forward.w2, "weight", get(p + "feed_forward.w2.weight"))
            put(blk.attention_norm, "weight", get(p + "attention_norm.weight"))
            put(blk.ffn_norm, "weight", get(p + "ffn_norm.weight"))

    def make_batch_invariant(self) -> None:
        """Make a sequence's logits independent of the batch it runs in, bit for bit (`batch_invariant: true`):
        every matmul summed in one order at any row count (llamakit.model.linear); decode attention over one key
        range per row whatever the batch size (n_splits would cut a small batch's keys into more ranges, summed in
        another order); and a prefill computed as its tokens' decode steps would be (attention through the decode kernel,
        the fused add + RMSNorm), so a sequence preempted and recomputed goes on with the same bits. The other
        kernels (rotary, the eager attention, sampling) treat each row alone."""
        rows = INVARIANT_ROWS[self.device.type]
        for module in self.modules():
            if isinstance(module, (ColumnLinear, RowLinear)):
                module.invariant_rows = rows
        self.batch_invariant = True

    @property
    def dtype(self) -> torch.dtype:
        return self.norm.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.norm.weight.device

    def _layers(self, h: torch.Tensor, attend: Attend, add_norm: AddNorm) -> tuple[torch.Tensor, torch.Tensor]:
        """The layer loop, written once: (residual stream, last layer's pending feed-forward output)."""
        delta = None
        for blk in self.layers:
            h, delta = blk(h, delta, attend, add_norm)
        return h, delta

    @torch.inference_mode()
    def prefill(self, tokens: torch.Tensor, lengths: torch.Tensor, table: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """Run right-padded sequences `tokens` [B, T] into the cache blocks of `table` [B, max_blocks]; logits
        [B, V] at each last real token. Only the real tokens go through the layers (packed; the standard workload's
        prefill groups are ~37% padding)."""
        cos, sin = self.rope_cos, self.rope_sin
        pack = Packing(lengths, tokens.shape[1], PACK_MULTIPLE)
        # on GPUs the fused add + RMSNorm: a 48-prompt prefill step spent 43% of its GPU time outside the matmuls,
        # mostly in eager fp32 elementwise passes (torch.profiler, 7B shape, H200, 2026-11-30)
        add_norm = add_norm_fused if tokens.is_cuda or self.batch_invariant else add_norm_eager
        invariant = self.batch_invariant
        h, delta = self._layers(self.tok_embeddings(tokens.reshape(-1)[pack.index]),
                                lambda att, x: att.prefill_packed(x, pack, cos, sin, cache, table, invariant), add_norm)
        x, _ = add_norm(h[pack.last], delta[pack.last], self.norm)  # only each last real token needs logits
        return self.output(x).float()

    @torch.inference_mode()
    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Final normed hidden states [B, T, dim] of right-padded texts, no KV cache (for `llamakit score`, which
        sends only the positions it scores through the output layer, see `logits_shard`)."""
        cos, sin = self.rope_cos, self.rope_sin
        h, delta = self._layers(self.tok_embeddings(tokens),
                                lambda att, x: att.prefill(x, cos, sin), add_norm_eager)
        return add_norm_eager(h, delta, self.norm)[0]

    def logits_shard(self, h: torch.Tensor) -> torch.Tensor:
        """This rank's slice of the vocabulary's logits (fp32) for hidden states h [..., dim]: the output layer
        without its all-gather, so scoring reduces over the vocabulary with all-reduces instead."""
        return linear(h, self.output).float()

    @torch.inference_mode()
    def decode(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache, table: torch.Tensor,
               kv_len: int) -> torch.Tensor:
        """One step: tokens [B] at positions pos [B], cache blocks of table [B, max_blocks]; logits [B, V] (fp32)."""
        cos = self.rope_cos[pos].unsqueeze(1)
        sin = self.rope_sin[pos].unsqueeze(1)
        h, delta = self._layers(self.tok_embeddings(tokens.unsqueeze(1)),
                                lambda att, x: att.decode(x, cos, sin, cache, table, pos, kv_len), add_norm_eager)
        x, _ = add_norm_eager(h[:, 0], delta[:, 0], self.norm)
        return self.output(x).float()

    def decode_fast(self, tokens: torch.Tensor, pos: torch.Tensor, cache: KVCache, table: torch.Tensor,
                    splits: int | None = None) -> torch.Tensor:
        """The same step as `decode`, through fused kernels (Triton on CUDA, eager twins elsewhere): residual
        add fused into RMSNorm, rotary fused with the cache write, attention over each row's own length.
        No host sync and static shapes, so a CUDA graph can capture it."""
        lengths = pos + 1  # once a step, not once a layer
        order = kernels.longest_first(lengths)
        if splits is None and self.batch_invariant:
            splits = 1
        h, delta = self._layers(
            self.tok_embeddings(tokens),
            lambda att, x: att.decode_fast(x, pos, lengths, order, self.rope_cos, self.rope_sin, cache, table,
                                           splits),
            add_norm_fused)
        x, _ = add_norm_fused(h, delta, self.norm)
        return self.output(x).float()


def model_parallel_info() -> tuple[int, int]:
    """(rank, size) of this process in its model-parallel group."""
    return get_model_parallel_rank(), get_model_parallel_world_size()

