"""The decode step's plain sampling (temperature + top-p, or argmax per row) as one Triton kernel per row, without
sorting the vocabulary, and the rule it shares with the eager path: which tokens form the nucleus.

The nucleus keeps a token when the probability mass of the tokens strictly more likely than it is <= top_p times the
row's total (Meta's rule on a sorted row, with equal probabilities kept or dropped together). The kernel finds the
logit boundary of that set by a 16-way search over logit values, then draws with the exponential race of
`llamakit.engine.sampler` (the same hash noise per token id), so the choice does not depend on sorting, batch or
rank. A sort over 32,000 logits per row took 0.45 ms per step at 128 rows and 2.4 ms at 1,024 on an H200
(tools/profile_decode.py, 2026-11-30); the kernel reads each row a few times from L2 instead.
"""

from __future__ import annotations

import torch

from llamakit.model.kernels import HAVE_TRITON, _use_triton

# The race's uniform U never reaches 1: the top 24-bit hash, (2^24 - 1 + 0.5) / 2^24, rounds to 1.0 in float32, where
# E = -log(U) = 0 made p / E NaN for a token outside the nucleus, which argmax picked (one token id in 2^24 a step:
# ~1 in 500 sampled tokens at 32,000 ids, in the eager path; the kernel instead never drew such a token, kept or not).
# Clamped to the largest float32 below 1, such a token's E is tiny: it wins when kept and never when dropped.
U_MAX = 1.0 - 2.0 ** -24

if HAVE_TRITON:
    import triton
    import triton.language as tl

    _U_MAX = tl.constexpr(U_MAX)


def nucleus_keep_sorted(p_sorted: torch.Tensor, top_p: torch.Tensor) -> torch.Tensor:
    """Keep-mask of a row-wise descending-sorted probability tensor [B, V] under top_p [B, 1]: the mass strictly
    above each token (ties share the mass before their group) <= top_p x the row's total. The mass before each
    position only grows, so the kept positions are a prefix (the first m) plus the rest of the m-th token's tie group;
    no scan over tie groups (a cummax over 32,000 positions took 89 us a step at batch 1 on an H200)."""
    cum = torch.cumsum(p_sorted, dim=-1)
    before = torch.nn.functional.pad(cum[:, :-1], (1, 0))  # exactly non-decreasing, unlike cum - p
    m = (before <= top_p * cum[:, -1:]).sum(dim=-1, keepdim=True).clamp(min=1)
    edge = p_sorted.gather(1, m - 1)
    ar = torch.arange(p_sorted.shape[-1], device=p_sorted.device)[None, :]
    return (ar < m) | (p_sorted == edge)


if HAVE_TRITON:

    @triton.jit
    def _mix32(x):
        x = x ^ (x >> 16)
        x = x * 0x85EBCA6B
        x = x ^ (x >> 13)
        x = x * 0xC2B2AE35
        return x ^ (x >> 16)

    # the settings' row strides are the batch size: not specialised, so a prefill group of another size does not
    # compile the kernel again (Triton specialises integers on divisibility by 16) inside a timed run
    @triton.jit(do_not_specialize=["stride_i", "stride_f"])
    def _nucleus_kernel(X, stride_x, V, INTS, stride_i, FLOATS, stride_f, OUT,
                        BLOCK: tl.constexpr, WAYS: tl.constexpr, PASSES: tl.constexpr):
        r = tl.program_id(0)
        key = tl.load(INTS + r).to(tl.uint32)  # INT_ROWS: key, sample, step, seed
        smp = tl.load(INTS + stride_i + r)
        step = tl.load(INTS + 2 * stride_i + r).to(tl.uint32)
        seed = tl.load(INTS + 3 * stride_i + r).to(tl.uint32)
        temp = tl.load(FLOATS + r)
        top_p = tl.load(FLOATS + stride_f + r)
        # the row's hash state (sampler.hash_uniform, in uint32 arithmetic)
        h = _mix32(key * 0x9E3779B1 + seed)
        h = _mix32(h ^ (step * 0x7FEB352D))
        h2 = _mix32(h ^ (smp.to(tl.uint32) * 0x165667B1))
        h = tl.where(smp > 0, h2, h)
        row = X + r.to(tl.int64) * stride_x
        offs = tl.arange(0, BLOCK)
        # Every pass keeps per-lane partials in registers over the row's blocks and reduces across the program once
        # at its end (a cross-warp reduction costs barriers; per block, they made the kernel latency-bound).
        # pass 1: max (first index of it: argmax for temperature 0) and min
        mx = tl.full([BLOCK], float("-inf"), tl.float32)
        mn = tl.full([BLOCK], float("inf"), tl.float32)
        am = tl.zeros([BLOCK], tl.int32)
        for c in range(0, V, BLOCK):
            idx = c + offs
            mask = idx < V
            x = tl.load(row + idx, mask=mask, other=float("-inf")).to(tl.float32)
            am = tl.where(x > mx, idx, am)  # strictly greater: a lane keeps its first index of its max
            mx = tl.maximum(mx, x)
            mn = tl.minimum(mn, tl.where(mask, x, float("inf")))
        m = tl.max(mx, 0)
        arg = tl.min(tl.where(mx == m, am, V), 0)
        lo = tl.min(mn, 0)
        inv_t = 1.0 / tl.where(temp > 0, temp, 1.0)
        # pass 2: the row's total mass (unnormalised, relative to the max)
        zs = tl.zeros([BLOCK], tl.float32)
        for c in range(0, V, BLOCK):
            idx = c + offs
            x = tl.load(row + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
            zs += tl.exp((x - m) * inv_t)
        target = top_p * tl.sum(zs, 0)
        # the boundary: the largest logit value lo whose strictly-higher mass exceeds the target (everything above
        # lo is kept); WAYS thresholds per pass shrink [lo, hi] by WAYS + 1
        lo = lo - 1.0
        hi = m
        ways = tl.arange(0, WAYS)
        for _ in range(PASSES):
            width = (hi - lo) / (WAYS + 1)
            th = lo + width * (ways + 1).to(tl.float32)
            acc = tl.zeros([WAYS, BLOCK], tl.float32)
            for c in range(0, V, BLOCK):
                idx = c + offs
                x = tl.load(row + idx, mask=idx < V, other=float("-inf")).to(tl.float32)
                e = tl.exp((x - m) * inv_t)
                acc += tl.where(x[None, :] > th[:, None], e[None, :], 0.0)
            mass = tl.sum(acc, 1)
            n_over = tl.sum((mass > target).to(tl.int32), 0)  # thresholds still below the boundary
            new_lo = lo + width * n_over.to(tl.float32)
            hi = tl.where(n_over < WAYS, lo + width * (n_over + 1).to(tl.float32), hi)
            lo = new_lo
        lo = tl.where(top_p >= 1.0, float("-inf"), lo)
        # the exponential race argmax(p / E), E = -log(U(token)), over the kept tokens
        best = tl.full([BLOCK], -1.0, tl.float32)
        bi = tl.zeros([BLOCK], tl.int32)
        for c in range(0, V, BLOCK):
            idx = c + offs
            mask = idx < V
            x = tl.load(row + idx, mask=mask, other=float("-inf")).to(tl.float32)
            hx = _mix32(h ^ (idx.to(tl.uint32) * 0x27D4EB2F))
            u = tl.minimum(((hx >> 8).to(tl.float32) + 0.5) * (1.0 / 16777216.0), _U_MAX)  # as hash_uniform
            score = tl.where(mask & (x > lo), tl.exp((x - m) * inv_t) / -tl.log(u), -1.0)
            bi = tl.where(score > best, idx, bi)
            best = tl.maximum(best, score)
        top = tl.max(best, 0)
        tok = tl.min(tl.where(best == top, bi, V), 0)
        tl.store(OUT + r, tl.where(temp > 0, tok, arg).to(tl.int64))


# One program per row, bound by its serial passes over the row (the time is the same from 1 to 128 rows). Keeping
# each pass's partials per lane and reducing once per pass took a step's sampling from 155 to 105 us at 1..128 rows
# and from 1,037 to 866 us at 1,024 rows on an H200 inside CUDA graphs (tools/profile_decode.py --part nucleus,
# 2026-11-30; 1,024-wide blocks with 32 warps were the fastest of 9 settings at every batch; the eager sort path:
# 199 us at 1 row, 1,055 at 128). (The block width sets the order of the fp32 sums: a token exactly at the nucleus
# boundary can, rarely, be kept at one setting and dropped at another.)
GPU_LAUNCH = (1024, 32)  # (block, warps) on GPUs; Triton's CPU interpreter (tests) runs (1024, 8)


def use_kernel(logits: torch.Tensor) -> bool:
    return _use_triton(logits) and logits.dim() == 2


def nucleus_sample(logits: torch.Tensor, ints: torch.Tensor, floats: torch.Tensor, passes: int = 7,
                   block: int | None = None, num_warps: int | None = None) -> torch.Tensor:
    """Token per row of `logits` [B, V]: argmax where temperature <= 0, else top-p sampling as
    `nucleus_keep_sorted` defines it, drawn by the exponential race; per-row settings as sampler.sample_step's
    `ints` [N_INT, B] / `floats` [N_FLOAT, B]. No host sync, static shapes (CUDA graphs capture it)."""
    b, v = logits.shape
    logits = logits if logits.stride(-1) == 1 else logits.contiguous()
    ints = ints if ints.stride(-1) == 1 else ints.contiguous()
    floats = floats if floats.stride(-1) == 1 else floats.contiguous()
    out = torch.empty(b, dtype=torch.int64, device=logits.device)
    if block is None or num_warps is None:
        block, num_warps = GPU_LAUNCH if logits.is_cuda else (1024, 8)
    _nucleus_kernel[(b,)](logits, logits.stride(0), v, ints, ints.stride(0), floats, floats.stride(0), out,
                          BLOCK=block, WAYS=16, PASSES=passes, num_warps=num_warps)
    return out
