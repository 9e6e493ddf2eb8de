"""Triton kernels for the GPU decode step: add+RMSNorm, rotary+paged-KV-cache write, and split-K decode attention
that reads each sequence's own length through its block table (nothing is padded to the longest sequence).

Each kernel has an eager twin in this file used on CPU and as the test reference.
"""

from __future__ import annotations

import functools
import math
import os

import torch

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # CPU-only installs: the eager twins are used
    HAVE_TRITON = False


def _use_triton(t: torch.Tensor) -> bool:
    """Triton on CUDA tensors; on CPU only under TRITON_INTERPRET=1 (how the tests check the kernels)."""
    return HAVE_TRITON and (t.is_cuda or os.environ.get("TRITON_INTERPRET") == "1")


def _next_pow2(n: int) -> int:
    return 1 << (max(1, n) - 1).bit_length()


# ------------------------------------------------------------------------------------------ fp8 (e4m3) KV cache

FP8 = torch.float8_e4m3fn  # kv_cache_dtype "fp8": OCP e4m3 (vLLM's default fp8 format), saturated at +-448
FP8_MAX = 448.0


def to_fp8(x: torch.Tensor) -> torch.Tensor:
    """Round to the fp8 cache format (nearest even, saturated): what the kernels store, bit for bit."""
    return x.float().clamp(-FP8_MAX, FP8_MAX).to(FP8)


def to_cache(x: torch.Tensor, cache: torch.Tensor) -> torch.Tensor:
    """x as `cache` stores it: rounded to fp8 (saturated) for an fp8 cache; otherwise as it is (the copy casts)."""
    return to_fp8(x) if cache.dtype == FP8 else x


@functools.lru_cache(maxsize=None)
def _fp8_instructions(device_index: int) -> bool:
    """The GPU converts e4m3 in hardware (compute capability 8.9+: Ada, Hopper)."""
    return torch.cuda.get_device_capability(device_index) >= (8, 9)


def _fp8_mode(cache: torch.Tensor, native: bool | None) -> tuple[torch.Tensor, int]:
    """How a kernel takes the cache: 0 as it is (16/32 bit); 1 fp8 as raw bytes, converted with integer ops (the
    rotary kernel's stores, bit for bit as torch's cast; reads on GPUs without fp8 instructions, e.g. the RTX A6000,
    and in the CPU interpreter); 2 fp8 read through the hardware's e4m3 -> fp16 conversion (`native` None: where
    the GPU has one; integer reads made the H200's 1,024-row dataset bench slower than a bf16 cache, 12,276 against
    12,638 tok/s, 2026-11-30)."""
    if cache.dtype != FP8:
        return cache, 0
    if native is None:
        native = cache.is_cuda and _fp8_instructions(cache.device.index if cache.device.index is not None
                                                     else torch.cuda.current_device())
    return (cache, 2) if native else (cache.view(torch.uint8), 1)


if HAVE_TRITON:

    @triton.jit
    def _fp8_bits(x):
        """fp32 -> e4m3fn byte: round to nearest even, saturated at 448 (as torch's .to(float8_e4m3fn))."""
        raw = x.to(tl.int32, bitcast=True)
        a = tl.minimum(tl.abs(x), 448.0)
        bits = a.to(tl.int32, bitcast=True)
        normal = ((bits + 0x7FFFF + ((bits >> 20) & 1)) >> 20) - (120 << 3)  # 3 mantissa bits, exponent bias 7
        sub = ((a * 512.0 + 8388608.0) - 8388608.0).to(tl.int32)  # below 2^-6: multiples of 2^-9, nearest even
        code = tl.where(a >= 0.015625, normal, sub) | ((raw >> 24) & 0x80)
        return code.to(tl.uint8)

    @triton.jit
    def _fp8_half(code):
        """e4m3fn byte -> fp16 holding value / 256 exactly: the byte's sign and its 7 magnitude bits shifted into
        fp16's (an exponent bias 8 apart), three integer ops and no conversion instruction."""
        c = code.to(tl.int8, bitcast=True).to(tl.int32)  # sign-extended: bits 15 and 14 after the shift are the sign
        return ((c << 7) & 0xBFFF).to(tl.int16).to(tl.float16, bitcast=True)  # bit 14 cleared


# ---------------------------------------------------------------------------------------------- add + RMSNorm

def add_rmsnorm_eager(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """h + delta, then Meta's RMSNorm of it: returns (normed, new_h)."""
    if delta is not None:
        h = h + delta
    hf = h.float()
    normed = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).type_as(h) * weight
    return normed, h


if HAVE_TRITON:

    @triton.jit
    def _add_rmsnorm_kernel(H, DELTA, W, OUT, HOUT, n_cols, eps, HAS_DELTA: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < n_cols
        h = tl.load(H + row * n_cols + cols, mask=mask, other=0.0)
        if HAS_DELTA:
            h = h + tl.load(DELTA + row * n_cols + cols, mask=mask, other=0.0)
            tl.store(HOUT + row * n_cols + cols, h, mask=mask)
        hf = h.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(hf * hf, axis=0) / n_cols + eps)
        normed = (hf * rstd).to(h.dtype).to(tl.float32)
        w = tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(OUT + row * n_cols + cols, (normed * w).to(h.dtype), mask=mask)


def add_rmsnorm(h: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """Fused (h + delta) and RMSNorm on CUDA; eager elsewhere. Returns (normed, new_h)."""
    if not _use_triton(h):
        return add_rmsnorm_eager(h, delta, weight, eps)
    n = h.shape[-1]
    h2 = h.reshape(-1, n)
    out = torch.empty_like(h2)
    hout = torch.empty_like(h2) if delta is not None else h2
    d2 = delta.reshape(-1, n) if delta is not None else h2
    _add_rmsnorm_kernel[(h2.shape[0],)](h2, d2, weight, out, hout, n, eps, HAS_DELTA=delta is not None,
                                        BLOCK=_next_pow2(n), num_warps=8)
    return out.view(h.shape), hout.view(h.shape)


# ---------------------------------------------------------------------------------------- rotary + cache write

def rope_store_eager(qkv: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                     k_cache: torch.Tensor, v_cache: torch.Tensor, table: torch.Tensor, n_heads: int,
                     n_kv: int, rows: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Split qkv [N, (H+2Hkv)*D] of N tokens, rotate q and k (interleaved pairs, fp32), store k/v of token i at
    position pos[i] of the paged cache [n_blocks, Hkv, block_size, D] through block-table row rows[i] (default: row
    i); returns the rotated q [N, H, D] and k [N, Hkv, D]."""
    n = qkv.shape[0]
    d = k_cache.shape[-1]
    bs = k_cache.shape[2]
    q, k, v = qkv.split([n_heads * d, n_kv * d, n_kv * d], dim=-1)
    c, s = cos[pos][:, None, :], sin[pos][:, None, :]

    def rot(x: torch.Tensor, h: int) -> torch.Tensor:
        xf = x.reshape(n, h, d // 2, 2).float()
        xr, xi = xf[..., 0], xf[..., 1]
        return torch.stack((xr * c - xi * s, xr * s + xi * c), -1).flatten(-2).type_as(x)

    rows = torch.arange(n, device=qkv.device) if rows is None else rows
    blk = table[rows, pos // bs].long()
    kr = rot(k, n_kv)
    k_cache[blk, :, pos % bs] = to_cache(kr, k_cache)
    v_cache[blk, :, pos % bs] = to_cache(v.reshape(n, n_kv, d), v_cache)
    return rot(q, n_heads), kr


if HAVE_TRITON:

    @triton.jit
    def _rope_kernel(QKV, POS, ROWS, COS, SIN, QOUT, KOUT, KC, VC, BT, stride_qkv, stride_bt, stride_kb, stride_kh,
                     stride_kl, N_HEADS: tl.constexpr, N_KV: tl.constexpr, D: tl.constexpr, PAGE: tl.constexpr,
                     BLOCK_H: tl.constexpr, BLOCK_KV: tl.constexpr, PACKED: tl.constexpr, KV_FP8: tl.constexpr):
        """One program per (token, block of heads): rotate q and k (interleaved pairs, fp32), write q (and for a
        packed prefill k) out, store k/v in the paged cache. Decode: token b at POS[b] of block-table row b (POS < 0:
        a padding row, written to the scratch block 0); packed prefill: token i at POS[i] of row ROWS[i]. Head block
        j holds q/k heads j*BLOCK_H.. and v heads j*BLOCK_KV.. Rows are read and written whole (contiguous,
        vectorised); the pairs are split and joined in registers."""
        tok = tl.program_id(0)
        hb = tl.program_id(1)
        pos = tl.load(POS + tok)
        real = pos >= 0
        if PACKED:
            b = tl.load(ROWS + tok)
        else:
            b = tok
        half = tl.arange(0, D // 2)
        full = tl.arange(0, D)
        hh = hb * BLOCK_H + tl.arange(0, BLOCK_H)  # q heads, then k heads
        hmask = (hh < N_HEADS + N_KV)[:, None]
        c = tl.load(COS + pos * (D // 2) + half)[None, :]
        s = tl.load(SIN + pos * (D // 2) + half)[None, :]
        row = QKV + tok.to(tl.int64) * stride_qkv
        x = tl.load(row + hh[:, None] * D + full[None, :], mask=hmask, other=0.0).to(tl.float32)
        xr, xi = tl.split(tl.reshape(x, [BLOCK_H, D // 2, 2]))
        out = tl.reshape(tl.join(xr * c - xi * s, xr * s + xi * c), [BLOCK_H, D])
        qmask = (hh < N_HEADS)[:, None]
        tl.store(QOUT + tok.to(tl.int64) * (N_HEADS * D) + hh[:, None] * D + full[None, :],
                 out.to(QOUT.dtype.element_ty), mask=qmask)
        kmask = (hh >= N_HEADS)[:, None] & hmask
        kh = (hh - N_HEADS)[:, None]
        if PACKED:
            tl.store(KOUT + tok.to(tl.int64) * (N_KV * D) + kh * D + full[None, :], out.to(KOUT.dtype.element_ty),
                     mask=kmask)
        blk = tl.load(BT + b * stride_bt + pos // PAGE, mask=real, other=0).to(tl.int64)
        at = blk * stride_kb + (pos % PAGE) * stride_kl
        if KV_FP8:  # k rounded to the model's dtype first, as the eager twin's
            kout = _fp8_bits(out.to(QOUT.dtype.element_ty).to(tl.float32))
        else:
            kout = out.to(KC.dtype.element_ty)
        tl.store(KC + at + kh * stride_kh + full[None, :], kout, mask=kmask)
        vh = hb * BLOCK_KV + tl.arange(0, BLOCK_KV)
        vmask = (vh < N_KV)[:, None]
        v = tl.load(row + (N_HEADS + N_KV + vh[:, None]) * D + full[None, :], mask=vmask, other=0.0)
        if KV_FP8:
            v = _fp8_bits(v.to(tl.float32))
        tl.store(VC + at + vh[:, None] * stride_kh + full[None, :], v, mask=vmask)


def rope_config(tokens: int, heads: int) -> tuple[int, int]:
    """(heads per program, warps) of the rotary kernel. Small programs (8 heads of 128: 16 values a thread) keep
    everything in registers; one program per token with all 48 heads spilled (4.9 ms a 1,024-row step on an H200,
    tools/profile_decode.py, 2026-11-30) and one per head paid a fixed cost 49,152 times (1.34 ms). Few tokens
    (batch 1): 2 heads a program, so a token's heads are spread over many SMs."""
    if tokens * heads >= 2048:
        return 8, 2
    return 2, 1


def _rope_launch(qkv2: torch.Tensor, pos, rows, cos, sin, q, k, k_cache, v_cache, table, n_heads: int, n_kv: int,
                 packed: bool, config: tuple[int, int] | None = None) -> None:
    d = k_cache.shape[-1]
    assert k_cache.stride() == v_cache.stride() and k_cache.stride(-1) == 1 and qkv2.stride(-1) == 1
    (k_cache, fp8), (v_cache, _) = _fp8_mode(k_cache, False), _fp8_mode(v_cache, False)
    tokens, heads = qkv2.shape[0], n_heads + n_kv
    block_h, warps = config or rope_config(tokens, heads)
    block_h = min(block_h, _next_pow2(heads))
    parts = -(-heads // block_h)
    block_kv = _next_pow2(-(-n_kv // parts))
    _rope_kernel[(tokens, parts)](
        qkv2, pos, rows, cos, sin, q, k, k_cache, v_cache, table, qkv2.stride(0), table.stride(0),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), N_HEADS=n_heads, N_KV=n_kv, D=d,
        PAGE=k_cache.shape[2], BLOCK_H=block_h, BLOCK_KV=block_kv, PACKED=packed, KV_FP8=fp8, num_warps=warps)


def rope_store(qkv: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               k_cache: torch.Tensor, v_cache: torch.Tensor, table: torch.Tensor, n_heads: int,
               n_kv: int, config: tuple[int, int] | None = None) -> torch.Tensor:
    """One kernel on CUDA for rotary of q/k and the paged KV-cache write; eager elsewhere. `config`: rope_config's
    (heads per program, warps), for tools/profile_decode.py's sweep."""
    if not _use_triton(qkv):
        return rope_store_eager(qkv, pos, cos, sin, k_cache, v_cache, table, n_heads, n_kv)[0]
    b = qkv.shape[0]
    q = torch.empty((b, n_heads, k_cache.shape[-1]), dtype=qkv.dtype, device=qkv.device)
    _rope_launch(qkv, pos, pos, cos, sin, q, q, k_cache, v_cache, table, n_heads, n_kv, False, config)
    return q


def rope_packed(qkv: torch.Tensor, pos: torch.Tensor, rows: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                k_cache: torch.Tensor, v_cache: torch.Tensor, table: torch.Tensor, n_heads: int, n_kv: int,
                config: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A packed prefill's rotary and paged KV-cache write in one kernel on CUDA (rope_store_eager elsewhere): token i
    of qkv [N, (H+2Hkv)*D] (the real tokens of several sequences, no padding) at position pos[i] of block-table row
    rows[i]; returns the rotated q [N, H, D] and k [N, Hkv, D] for the prefill's attention."""
    if not _use_triton(qkv):
        return rope_store_eager(qkv, pos, cos, sin, k_cache, v_cache, table, n_heads, n_kv, rows)
    n, d = qkv.shape[0], k_cache.shape[-1]
    q = torch.empty((n, n_heads, d), dtype=qkv.dtype, device=qkv.device)
    k = torch.empty((n, n_kv, d), dtype=qkv.dtype, device=qkv.device)
    _rope_launch(qkv, pos, rows, cos, sin, q, k, k_cache, v_cache, table, n_heads, n_kv, True, config)
    return q, k


# ------------------------------------------------------------------------------------------- decode attention

def decode_attention_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                           lengths: torch.Tensor) -> torch.Tensor:
    """Reference: q [B, H, D] over the paged cache k/v [n_blocks, Hkv, block_size, D], row b reading positions
    [0, lengths[b]) through its block-table row table[b]. On GPUs one row at a time: cuBLAS picks its batched-matmul
    kernel by the batch count, so a row's result would depend on the batch (batch_invariant); on CPUs every batch
    item is the same matmul (tests/test_decoding.py holds the rows' bits equal), so the rows go together: padding them
    to chunks of 16 had made a tiny model's batch-1 generation ~3x slower on the CPU (2026-11-30)."""
    if not q.is_cuda or q.shape[0] == 1:
        return _attention_eager(q, k, v, table, lengths)
    return torch.cat([_attention_eager(q[i:i + 1], k, v, table[i:i + 1], lengths[i:i + 1])
                      for i in range(q.shape[0])])


def _attention_eager(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor,
                     lengths: torch.Tensor) -> torch.Tensor:
    b, h, d = q.shape
    nb, bs = table.shape[1], k.shape[2]
    hkv = k.shape[1]
    kk = k[table.long()].transpose(1, 2).reshape(b, hkv, nb * bs, d)  # [B, Hkv, L, D]
    vv = v[table.long()].transpose(1, 2).reshape(b, hkv, nb * bs, d)
    g = h // hkv
    kk = kk.float().repeat_interleave(g, dim=1)  # fp8 caches: exact in fp32
    vv = vv.float().repeat_interleave(g, dim=1)
    scores = torch.einsum("bhd,bhld->bhl", q.float(), kk) / math.sqrt(d)
    mask = torch.arange(nb * bs, device=q.device)[None, :] < lengths[:, None]
    scores = scores.masked_fill(~mask[:, None, :], float("-inf"))
    return torch.einsum("bhl,bhld->bhd", torch.softmax(scores, -1), vv).to(q.dtype)


if HAVE_TRITON:

    @triton.jit
    def _paged_offsets(BT, row, offs, nmask, stride_kb, stride_kl, offs_d, PAGE: tl.constexpr):
        """Where key slots `offs` [N] of the row whose block-table row starts at BT + row lie in one head of a
        paged cache layer: [N, D] offsets (masked slots point at block 0, the scratch block)."""
        blk = tl.load(BT + row + offs // PAGE, mask=nmask, other=0).to(tl.int64)
        return blk[:, None] * stride_kb + (offs % PAGE)[:, None] * stride_kl + offs_d[None, :]

    @triton.jit
    def _decode_attn_kernel(Q, K, V, BT, LENS, ORDER, ACC, M, L_OUT, OUT, sm_scale,
                            stride_qb, stride_qh, stride_bt, stride_kb, stride_kh, stride_kl,
                            stride_ab, stride_ah, stride_as, stride_mb, stride_mh, stride_ob, stride_oh,
                            G: tl.constexpr, BLOCK_G: tl.constexpr, D: tl.constexpr,
                            BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, PAGE: tl.constexpr, DIRECT: tl.constexpr,
                            ORDERED: tl.constexpr, KV_FP8: tl.constexpr):
        b = tl.program_id(0)
        if ORDERED:  # rows longest first: the long rows' programs start in the first wave, not last
            b = tl.load(ORDER + b)
        kvh = tl.program_id(1)
        sp = tl.program_id(2)
        # 32-bit from here on: with the engine's int64 lengths (pos + 1) the key loop's index math ran in 64 bits,
        # 1,019 against 909 us a layer at 1,024 rows (profile_decode --part attn_layers, H200, 2026-11-30)
        seq_len = tl.load(LENS + b).to(tl.int32)
        start = sp * SPLIT
        end = tl.minimum(start + SPLIT, seq_len)
        offs_g = tl.arange(0, BLOCK_G)
        offs_d = tl.arange(0, D)
        offs_n = tl.arange(0, BLOCK_N)
        gmask = offs_g < G
        heads = kvh * G + offs_g
        q = tl.load(Q + b * stride_qb + heads[:, None] * stride_qh + offs_d[None, :], mask=gmask[:, None], other=0.0)
        if KV_FP8 > 0:  # keys/values arrive as fp16 (mode 1: holding value / 256): q in fp16, exact for a bf16 q
            if Q.dtype.element_ty != tl.float32:
                q = q.to(tl.float16)
        if KV_FP8 == 1:
            sm_scale = sm_scale * 256.0
        m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
        l_i = tl.zeros([BLOCK_G], tl.float32)
        acc = tl.zeros([BLOCK_G, D], tl.float32)
        kbase = K + kvh * stride_kh
        vbase = V + kvh * stride_kh
        for n0 in range(start, end, BLOCK_N):
            offs = n0 + offs_n
            nmask = offs < end
            where = _paged_offsets(BT, b * stride_bt, offs, nmask, stride_kb, stride_kl, offs_d, PAGE)
            k = tl.load(kbase + where, mask=nmask[:, None], other=0.0)
            if KV_FP8 == 1:
                k = _fp8_half(k).to(q.dtype)
            elif KV_FP8 == 2:
                k = k.to(tl.float16).to(q.dtype)
            qk = tl.dot(q, tl.trans(k)) * sm_scale
            qk = tl.where(nmask[None, :], qk, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            vt = tl.load(vbase + where, mask=nmask[:, None], other=0.0)
            if KV_FP8 == 1:
                vt = _fp8_half(vt).to(q.dtype)
            elif KV_FP8 == 2:
                vt = vt.to(tl.float16).to(q.dtype)
            acc = acc * alpha[:, None] + tl.dot(p.to(vt.dtype), vt)
            m_i = m_new
        if KV_FP8 == 1:
            acc = acc * 256.0
        if DIRECT:  # one split: normalise here (what the combine kernel computes for one split, bit for bit)
            o = acc / l_i[:, None]
            tl.store(OUT + b * stride_ob + heads[:, None] * stride_oh + offs_d[None, :], o.to(OUT.dtype.element_ty),
                     mask=gmask[:, None])
        else:
            out = ACC + b * stride_ab + heads[:, None] * stride_ah + sp * stride_as + offs_d[None, :]
            tl.store(out, acc, mask=gmask[:, None])
            tl.store(M + b * stride_mb + heads * stride_mh + sp, m_i, mask=gmask)
            tl.store(L_OUT + b * stride_mb + heads * stride_mh + sp, l_i, mask=gmask)


if HAVE_TRITON:

    @triton.jit
    def _decode_attn_row_kernel(Q, K, V, BT, LENS, ORDER, OUT, sm_scale, stride_qb, stride_qh, stride_bt, stride_kb,
                                stride_kh, stride_kl, stride_ob, stride_oh, D: tl.constexpr, BLOCK_N: tl.constexpr,
                                PAGE: tl.constexpr, ORDERED: tl.constexpr, KV_FP8: tl.constexpr):
        """One query row per program (MHA, one key range), all in registers: q.k as products summed over the head
        dim, p.v accumulated per key slot and summed once at the end. Without tl.dot's 16-row padding and its
        trip through shared memory, so an fp8 cache's bytes are converted and used where they are loaded."""
        b = tl.program_id(0)
        if ORDERED:
            b = tl.load(ORDER + b)
        h = tl.program_id(1)
        seq_len = tl.load(LENS + b).to(tl.int32)
        offs_d = tl.arange(0, D)
        offs_n = tl.arange(0, BLOCK_N)
        q = tl.load(Q + b * stride_qb + h * stride_qh + offs_d).to(tl.float32)
        scale = sm_scale
        if KV_FP8 == 1:
            scale = sm_scale * 256.0
        m_i = tl.max(tl.full([BLOCK_N], float("-inf"), tl.float32), 0)
        l_i = tl.sum(tl.zeros([BLOCK_N], tl.float32), 0)
        acc = tl.zeros([BLOCK_N, D], tl.float32)
        kbase = K + h * stride_kh
        vbase = V + h * stride_kh
        for n0 in range(0, seq_len, BLOCK_N):
            offs = n0 + offs_n
            nmask = offs < seq_len
            where = _paged_offsets(BT, b * stride_bt, offs, nmask, stride_kb, stride_kl, offs_d, PAGE)
            k = tl.load(kbase + where, mask=nmask[:, None], other=0.0)
            if KV_FP8 == 1:
                k = _fp8_half(k)
            s = tl.sum(k.to(tl.float32) * q[None, :], 1) * scale
            s = tl.where(nmask, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 0))
            alpha = tl.exp(m_i - m_new)
            p = tl.exp(s - m_new)
            l_i = l_i * alpha + tl.sum(p, 0)
            vt = tl.load(vbase + where, mask=nmask[:, None], other=0.0)
            if KV_FP8 == 1:
                vt = _fp8_half(vt)
            acc = acc * alpha + p[:, None] * vt.to(tl.float32)
            m_i = m_new
        o = tl.sum(acc, 0) / l_i
        if KV_FP8 == 1:
            o = o * 256.0
        tl.store(OUT + b * stride_ob + h * stride_oh + offs_d, o.to(OUT.dtype.element_ty))


def longest_first(lengths: torch.Tensor) -> torch.Tensor | None:
    """The decode batch's rows by descending length, for decode_attention's `order` (one small sort a step, shared
    by every layer): with one program per (row, head), a batch whose lengths differ (the standard workload: 136..736)
    otherwise ends with its longest rows running alone. None for one row."""
    if lengths.shape[0] < 2 or not _use_triton(lengths):
        return None
    return torch.argsort(lengths, descending=True, stable=True).to(torch.int32)


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (H100: 132, RTX A6000: 84): how many programs fill it."""
    return torch.cuda.get_device_properties(device).multi_processor_count


def n_splits(batch: int, n_kv: int, max_len: int, n_sm: int = 132, block: int = 64) -> int:
    """How many key ranges each (row, kv head) is cut into. Enough (row, kv head) pairs to give every SM two
    programs: one range, normalised in the kernel itself. Fewer (small batches): ranges of one tile each, so a
    single sequence's keys are read by many SMs at once (batch 1 spent ~9 us a layer in attention with two ranges on
    an H200, 2026-11-30); ranges past a row's length end at once."""
    if batch * n_kv >= 2 * n_sm:
        return 1
    return max(1, -(-max_len // block))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, table: torch.Tensor, lengths: torch.Tensor,
                     splits: int | None = None, block_n: int | None = None, num_warps: int | None = None,
                     num_stages: int | None = None, order: torch.Tensor | None = None,
                     fp8_native: bool | None = None, per_row: bool | None = None) -> torch.Tensor:
    """Split-K decode attention over the paged cache on CUDA (bf16/fp16): reads positions [0, lengths[b]) of row
    b only, through its block-table row; eager elsewhere. splits / block_n / num_warps / num_stages: launch
    settings (defaults: n_splits, the best measured), for tools/profile_decode.py's sweep. `order` [B]: the rows
    by descending length (longest_first), used when each (row, head) is one program. An fp8 cache is read through
    the hardware's conversion where the GPU has one (`fp8_native`: force either path, for the tests and sweeps), and
    with one query row per kv head (MHA) and one key range by a kernel without tl.dot (`per_row`: force it on/off)."""
    b, h, d = q.shape
    # tl.dot needs a head dim >= 16 (tiny test models use 8) and 16-bit inputs on GPUs (fp32 would run as tf32)
    if d < 16 or not (_use_triton(q) and (q.dtype in (torch.bfloat16, torch.float16) or not q.is_cuda)):
        return decode_attention_eager(q, k, v, table, lengths)
    hkv, page = k.shape[1], k.shape[2]
    max_len = table.shape[1] * page
    g = h // hkv
    if splits is None:
        n_sm = 132  # CPU (interpreter tests): an H100's count
        if q.is_cuda:
            n_sm = sm_count(q.device)
        splits = n_splits(b, hkv, max_len, n_sm)
    (k, fp8), (v, _) = _fp8_mode(k, fp8_native), _fp8_mode(v, fp8_native)
    if per_row is None:  # an fp8 cache, one query row per kv head, one key range: 476 us a layer at 1,024 rows on an
        per_row = fp8 > 0 and g == 1 and splits == 1  # H200 (fp8 bytes at 3.8 TB/s) against 748 through tl.dot, 1,001
        # with a bf16 cache; 107 against 125 and 143 us at 128 rows (profile_decode --part fp8, 2026-11-30). A bf16
        # cache is faster through tl.dot (1,029 us this way).
    if per_row and g == 1 and splits == 1:
        out = torch.empty_like(q)
        ordered = order is not None
        _decode_attn_row_kernel[(b, h)](
            q, k, v, table, lengths, order if ordered else lengths, out, 1.0 / math.sqrt(d), q.stride(0), q.stride(1),
            table.stride(0), k.stride(0), k.stride(1), k.stride(2), out.stride(0), out.stride(1), D=d,
            BLOCK_N=block_n or 16, PAGE=page, ORDERED=ordered, KV_FP8=fp8, num_warps=num_warps or 1,
            **({"num_stages": num_stages} if num_stages else {}))
        return out
    if block_n is None and fp8 and splits == 1:  # fp8 through tl.dot (GQA): 64-key tiles, 2 warps: 752 us a layer at
        block_n, num_warps = 64, num_warps or 2  # 1,024 MHA rows on an H200 against 905 with bf16's 128 / 4
    if block_n is None:  # 128-key tiles for one range per (row, head): 144 us a layer at 128 rows on an H200, 64-key
        block_n = 128 if splits == 1 else 64  # tiles 156 (1,024 rows: 877 vs 921; profile_decode --part attn)
    split_len = -(-max_len // splits)
    split_len = -(-split_len // block_n) * block_n  # whole tiles per split
    out = torch.empty_like(q)
    assert k.stride() == v.stride() and k.stride(-1) == 1 and q.is_contiguous()
    direct = splits == 1  # at 128+ rows: no partial sums to merge, no second kernel (0.68 ms a step at 1,024 rows)
    if direct:
        acc = m = l_ = out
        acc_strides, m_strides = (0, 0, 0), (0, 0)
    else:
        acc = torch.empty((b, h, splits, d), dtype=torch.float32, device=q.device)
        m = torch.empty((b, h, splits), dtype=torch.float32, device=q.device)
        l_ = torch.empty((b, h, splits), dtype=torch.float32, device=q.device)
        acc_strides, m_strides = (acc.stride(0), acc.stride(1), acc.stride(2)), (m.stride(0), m.stride(1))
    ordered = order is not None and direct
    _decode_attn_kernel[(b, hkv, splits)](
        q, k, v, table, lengths, order if ordered else lengths, acc, m, l_, out, 1.0 / math.sqrt(d),
        q.stride(0), q.stride(1), table.stride(0), k.stride(0), k.stride(1), k.stride(2),
        *acc_strides, *m_strides, out.stride(0), out.stride(1),
        G=g, BLOCK_G=max(16, _next_pow2(g)), D=d, BLOCK_N=block_n, SPLIT=split_len, PAGE=page, DIRECT=direct,
        ORDERED=ordered, KV_FP8=fp8, num_warps=num_warps or 4, **({"num_stages": num_stages} if num_stages else {}))
    if not direct:
        _combine_kernel[(b, h)](acc, m, l_, out, acc.stride(0), acc.stride(1), acc.stride(2), m.stride(0),
                                m.stride(1), out.stride(0), out.stride(1), S=splits, BLOCK_S=_next_pow2(splits), D=d,
                                num_warps=max(2, min(8, _next_pow2(splits) * d // 2048)))
    return out


if HAVE_TRITON:

    @triton.jit
    def _combine_kernel(ACC, M, L_IN, OUT, stride_ab, stride_ah, stride_as, stride_mb, stride_mh,
                        stride_ob, stride_oh, S: tl.constexpr, BLOCK_S: tl.constexpr, D: tl.constexpr):
        """Merge the per-split partial softmax sums of one (row, head): one kernel instead of ~8 torch ops."""
        b = tl.program_id(0)
        h = tl.program_id(1)
        offs_s = tl.arange(0, BLOCK_S)
        smask = offs_s < S
        m = tl.load(M + b * stride_mb + h * stride_mh + offs_s, mask=smask, other=float("-inf"))
        l_ = tl.load(L_IN + b * stride_mb + h * stride_mh + offs_s, mask=smask, other=0.0)
        w = tl.exp(m - tl.max(m, 0))
        w = tl.where(smask, w, 0.0)
        offs_d = tl.arange(0, D)
        acc = tl.load(ACC + b * stride_ab + h * stride_ah + offs_s[:, None] * stride_as + offs_d[None, :],
                      mask=smask[:, None], other=0.0)
        o = tl.sum(acc * w[:, None], 0) / tl.sum(l_ * w, 0)
        tl.store(OUT + b * stride_ob + h * stride_oh + offs_d, o.to(OUT.dtype.element_ty))


# ------------------------------------------------------------------------------------------------ SwiGLU gate

def silu_mul_eager(x13: torch.Tensor, hidden: int) -> torch.Tensor:
    a, b = x13.split(hidden, dim=-1)
    return torch.nn.functional.silu(a) * b


if HAVE_TRITON:

    @triton.jit
    def _silu_mul_kernel(X, OUT, hidden, stride_x, stride_o, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = cols < hidden
        a = tl.load(X + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        b = tl.load(X + row * stride_x + hidden + cols, mask=mask, other=0.0).to(tl.float32)
        gate = (a / (1.0 + tl.exp(-a))).to(X.dtype.element_ty).to(tl.float32)  # silu rounded as torch does
        tl.store(OUT + row * stride_o + cols, (gate * b).to(OUT.dtype.element_ty), mask=mask)


def silu_mul(x13: torch.Tensor, hidden: int) -> torch.Tensor:
    """silu(x13[..., :hidden]) * x13[..., hidden:] in one pass on CUDA (the fused w1/w3 output)."""
    if not _use_triton(x13):
        return silu_mul_eager(x13, hidden)
    x2 = x13.reshape(-1, x13.shape[-1])
    out = torch.empty((x2.shape[0], hidden), dtype=x13.dtype, device=x13.device)
    _silu_mul_kernel[(x2.shape[0], triton.cdiv(hidden, 1024))](x2, out, hidden, x2.stride(0), out.stride(0),
                                                               BLOCK=1024, num_warps=4)
    return out.view(*x13.shape[:-1], hidden)

