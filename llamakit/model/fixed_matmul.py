"""Batch-invariant matmul on CUDA: x [M, K] @ W [N, K].T through one Triton kernel whose order of summing a row's
products never depends on M, so a row gets the same bits alone or among 1,000 others.

Why not cuBLAS: it picks its kernel (and with it the summation order: split-K, tile shapes) by the row count. Here
every output element is summed the same way whatever M is: K in tiles of BLOCK_K, one after the other, each tile's
products added by the tensor cores into one fp32 accumulator, and, where K is cut into SPLIT_K parts, the parts'
fp32 sums added in a fixed order. Rows never meet in a tensor-core product, so the rows a tile holds (BLOCK_M) and
the columns (BLOCK_N) change which program computes an element, not how; nor does BLOCK_K (the tensor cores add 16
products at a time into the accumulator, in K's order, however many a loop step takes). So only the parts of K must
not follow M: split_k and SPLIT_ALIGN fix them from the matrix's shape, and the tile follows the row count (TILES).
On an H200 every tile gave bit-identical outputs (`tools/profile_decode.py --part fixed_mm`; tests/test_gpu.py holds
a row's bits alone and among 700 rows, across the tiles).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from llamakit.model.int8_kernels import add_parts
from llamakit.model.kernels import HAVE_TRITON, sm_count

if HAVE_TRITON:
    import triton
    import triton.language as tl


@dataclass(frozen=True)
class FixedConfig:
    """A launch: tiles [block_m, block_n] of the output, K in steps of block_k."""

    block_m: int
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    group_m: int = 8

    @property
    def name(self) -> str:
        return f"m{self.block_m}_n{self.block_n}_k{self.block_k}_w{self.num_warps}_s{self.num_stages}"


# the tiles, largest first: the first that gives every SM a program runs, else the last (any tile gives the same
# bits, so the choice may follow the row count). 128-row tiles only past 64 rows: below, most of their rows are padding.
LARGE = FixedConfig(128, 128, 64, 8, 4)
TILES: tuple[FixedConfig, ...] = (LARGE, FixedConfig(64, 128, 64, 4, 4), FixedConfig(64, 64, 128, 4, 4))
# where K is cut into parts, each part but the last is a multiple of this many (every tile's block_k divides it): the
# parts, and with them the order of the sums, then depend on the shape alone, not on the tile
SPLIT_ALIGN = 256
assert all(SPLIT_ALIGN % cfg.block_k == 0 for cfg in TILES)


def stages(cfg: FixedConfig, smem: int) -> int:
    """cfg's pipeline depth, cut to what a block's shared memory holds (the RTX A6000: 99 KiB, an H200: 227): each
    stage keeps a tile of x and one of W; 8 KiB stay for the rest. Stages change the loads' timing, never the sums."""
    per_stage = (cfg.block_m + cfg.block_n) * cfg.block_k * 2
    return max(2, min(cfg.num_stages, (smem - 8192) // per_stage))


@functools.lru_cache(maxsize=None)
def smem_per_block(device: torch.device) -> int:
    """The shared memory one block may use on `device` (what Triton checks a kernel against)."""
    return triton.runtime.driver.active.utils.get_device_properties(device.index or 0)["max_shared_mem"]


def part_length(k: int, split: int) -> int:
    """Length of each part of K but the last: a multiple of SPLIT_ALIGN, never of the tile's block_k, so every tile
    cuts K at the same places."""
    return -(-(-(-k // split)) // SPLIT_ALIGN) * SPLIT_ALIGN


def split_k(n: int, k: int) -> int:
    """Parts of K, from the matrix's shape alone: 2 where K is at least twice N (7B's w2: enough programs at a few
    rows), else 1."""
    return 2 if k >= 2 * n else 1


def pick_tile(m: int, n: int, split: int, sms: int) -> FixedConfig:
    for cfg in TILES:
        if (cfg is not LARGE or m > 64) and -(-m // cfg.block_m) * -(-n // cfg.block_n) * split >= sms:
            return cfg
    return TILES[-1]


def use_fixed_matmul(x: torch.Tensor, w: torch.Tensor) -> bool:
    """16-bit x and weights of one dtype on CUDA with Triton (int8 weights and CPUs keep linear's row chunks)."""
    return (x.is_cuda and HAVE_TRITON and x.dtype in (torch.bfloat16, torch.float16) and w.dtype == x.dtype
            and x.shape[-1] % 16 == 0)


def invariant_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] @ w [N, K].T with each row's bits independent of how many rows there are."""
    flat = x.reshape(-1, x.shape[-1])
    split = split_k(*w.shape)
    y = fixed_matmul(flat, w, pick_tile(flat.shape[0], w.shape[0], split, sm_count(x.device)), split)
    return y.view(*x.shape[:-1], w.shape[0])


if HAVE_TRITON:

    @triton.jit
    def _fixed_mm_kernel(X, W, Y, P, M, N, K, stride_xm, stride_wn, stride_ym, K_SPLIT,
                         BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                         SPLIT_K: tl.constexpr, GROUP_M: tl.constexpr, EVEN_K: tl.constexpr,
                         NUM_STAGES: tl.constexpr):
        pid = tl.program_id(0)
        pid_k = tl.program_id(1)
        num_m = tl.cdiv(M, BLOCK_M)
        num_n = tl.cdiv(N, BLOCK_N)
        # groups of GROUP_M row tiles walk the columns together: a weight tile is read once per group from memory
        per_group = GROUP_M * num_n
        first_m = (pid // per_group) * GROUP_M
        size_m = tl.minimum(num_m - first_m, GROUP_M)
        pid_m = first_m + (pid % per_group) % size_m
        pid_n = (pid % per_group) // size_m
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        # rows of x past M are not read (masked: at one row, 64 programs re-reading it would queue on one spot of
        # the L2); weight rows past N re-read the last one and are never stored
        row_ok = (offs_m < M)[:, None]
        xs = X + offs_m[:, None] * stride_xm + offs_k[None, :]
        ws = W + tl.minimum(offs_n, N - 1)[:, None] * stride_wn + offs_k[None, :]
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        k_lo = pid_k * K_SPLIT
        k_hi = tl.minimum(k_lo + K_SPLIT, K)
        for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=NUM_STAGES):
            if EVEN_K:
                x = tl.load(xs + k0, mask=row_ok, other=0.0)
                w = tl.load(ws + k0)
            else:
                x = tl.load(xs + k0, mask=row_ok & ((k0 + offs_k)[None, :] < K), other=0.0)
                w = tl.load(ws + k0, mask=(k0 + offs_k)[None, :] < K, other=0.0)
            acc = tl.dot(x, tl.trans(w), acc)
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        if SPLIT_K == 1:
            tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], acc.to(Y.dtype.element_ty), mask=mask)
        else:
            tl.store(P + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc, mask=mask)


def fixed_matmul(x: torch.Tensor, w: torch.Tensor, cfg: FixedConfig, split: int = 1) -> torch.Tensor:
    """x [M, K] @ w [N, K].T -> [M, N] in x's dtype, K cut into `split` parts. No host sync: CUDA graphs capture
    it (the parts' buffer comes from the graph's pool). The pipeline is as deep as the GPU's shared memory allows."""
    m, k = x.shape
    n = w.shape[0]
    x = x.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    k_split = part_length(k, split)
    part = y if split == 1 else torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(m, cfg.block_m) * triton.cdiv(n, cfg.block_n), split)
    depth = stages(cfg, smem_per_block(x.device)) if x.is_cuda else cfg.num_stages
    _fixed_mm_kernel[grid](x, w, y, part, m, n, k, x.stride(0), w.stride(0), y.stride(0), k_split,
                           BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k, SPLIT_K=split,
                           GROUP_M=cfg.group_m, EVEN_K=k % cfg.block_k == 0, NUM_STAGES=depth,
                           num_warps=cfg.num_warps, num_stages=depth)
    if split > 1:
        add_parts(part, None, y)
    return y
