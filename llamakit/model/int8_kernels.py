"""Decode's Triton matmuls: the int8 weight-only x [M, K] @ int8 W [N, K].T * scale [N], read straight from the int8
weights (a GEMV without tl.dot for batch 1: it streams the weights; tl.dot tiles for more rows), and the same GEMV over
16-bit weights at batch 1 (gemv16: faster than cuBLAS there).

A decode step at batch 1 reads every weight once and does two flops per byte, so its speed is the memory bandwidth
the kernel reaches, and on an H200 (~16 bytes per clock per SM) also how few instructions it spends per byte. The
GEMV gives each program BLOCK_N weight rows (512+ programs for N = 4096), loads 16 contiguous int8 per thread,
pipelines the loads (`tl.range(num_stages=)`: Triton pipelines a loop without tl.dot only when asked), turns int8
into fp32 with two instructions (inline PTX; Triton's cast takes four) and accumulates elementwise in fp32, summed
over K once. The tl.dot kernel converts on tensor-core operands; split-K gives it enough programs for small N.
Named configurations (CONFIGS) stay selectable; SCHEDULE says which runs for how many rows (`tools/int8_mm_bench.py`
times them all on a GPU; env LLAMAKIT_INT8_MM="1:name,16:name" overrides SCHEDULE for a measurement).
`int8_matmul_eager` is the reference: used on CPU and in the tests.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch

from llamakit.errors import LlamakitError
from llamakit.model.kernels import HAVE_TRITON, _use_triton, sm_count

if HAVE_TRITON:
    import triton
    import triton.language as tl

INT8_MM_MAX_ROWS = 256  # above this (prefill) dequantize + cuBLAS is faster
GEMV_MAX_ROWS = 4  # a GEMV program handles up to this many rows of x (one fp32 accumulator tile per row)


@dataclass(frozen=True)
class Int8Config:
    """One launch configuration. kernel "gemv": no tl.dot, a program multiplies BLOCK_N weight rows with up to 4 rows
    of x; "dot": tl.dot tiles x [16/32/64 rows] @ W.T (rows past M are wasted work, not wasted bytes). split_k > 1
    cuts K into parts that write fp32 partial sums, added in a second small kernel (a fixed order: deterministic; no
    atomics); 0 ("auto"): as many parts as give 2 programs per SM. cvt: how a GEMV turns int8 into fp32: "ptx" (byte
    permute into a float's mantissa, one subtract) or "bf16" (Triton's int8 -> bf16 -> fp32)."""

    kernel: str
    block_n: int
    block_k: int
    num_warps: int
    num_stages: int
    split_k: int = 1
    cvt: str = "ptx"

    @property
    def name(self) -> str:
        tail = "" if self.split_k == 1 else ("_skauto" if self.split_k == 0 else f"_sk{self.split_k}")
        tail += "_cvtbf16" if self.kernel == "gemv" and self.cvt == "bf16" else ""
        return f"{self.kernel}_n{self.block_n}_k{self.block_k}_w{self.num_warps}_s{self.num_stages}{tail}"


CONFIGS: dict[str, Int8Config] = {c.name: c for c in (
    # GEMV: BLOCK_N * BLOCK_K / (32 * warps) fp32 accumulators per thread and per row of x: 64 amortize the loop's
    # overhead best at one row (sm_90 SASS: ~0.14 warp instructions per weight byte, vs 0.17 at 32; at 4 rows they
    # spill), 16..32 keep 2..4 rows in registers. 7B's N = 4096 gives 512 programs at BLOCK_N 8.
    Int8Config("gemv", 8, 1024, 4, 3),
    Int8Config("gemv", 16, 512, 4, 3),
    Int8Config("gemv", 16, 512, 4, 3, split_k=0),
    Int8Config("gemv", 8, 512, 4, 3),
    Int8Config("gemv", 8, 512, 4, 3, cvt="bf16"),
    # tl.dot: n32_k128 (<= 16 rows) and n64_k128 (more rows) are the kernel's configurations before the GEMV: their
    # inner loops are lean (0.17 / 0.14 instructions per byte) but N / BLOCK_N programs are too few for N = 4096
    # (64..128 for 132 SMs); split-K "auto" fixes that
    Int8Config("dot", 32, 128, 4, 4),
    Int8Config("dot", 64, 128, 4, 4),
    Int8Config("dot", 32, 128, 4, 4, split_k=0),
    Int8Config("dot", 64, 128, 4, 4, split_k=0),
)}

# Which configuration runs for how many rows (decode batch): (up to rows, name), the first that fits wins. The one
# place to change after measuring with tools/int8_mm_bench.py on the GPU; the fastest there for 1 and 8 rows, the others
# as chosen before (the fewest sm_90 instructions per weight byte with >= 2 programs per SM).
# measured on an H200 (tools/int8_mm_bench.py, 2026-11-30; docs/evidence/2026-11-30-h200-session3/call2-int8_mm.jsonl):
# one row, the 7B step's five matmuls: gemv_n8_k512 2,039 us, gemv_n8_k1024 2,078, the old dot_n32 2,826, bf16 3,661;
# eight rows: dot_n64_k128 with split-K 2,364 us (old 2,873)
SCHEDULE: tuple[tuple[int, str], ...] = (
    (1, "gemv_n8_k512_w4_s3"),
    (16, "dot_n64_k128_w4_s4_skauto"),
    (INT8_MM_MAX_ROWS, "dot_n64_k128_w4_s4"),
)


@functools.lru_cache(maxsize=None)
def _schedule(env: str | None) -> tuple[tuple[int, str], ...]:
    """SCHEDULE, or the one in LLAMAKIT_INT8_MM ("rows:name,rows:name"; rows above its last entry use SCHEDULE)."""
    if not env:
        return SCHEDULE
    pairs = []
    for item in env.split(","):
        rows, _, name = item.strip().partition(":")
        if not rows.isdigit() or name not in CONFIGS:
            raise LlamakitError(f"LLAMAKIT_INT8_MM has {item.strip()!r}, not rows:config with a known config",
                                "use e.g. 1:gemv_n8_k1024_w4_s3,16:dot_n64_k128_w4_s4_skauto; configs: "
                                + ", ".join(CONFIGS))
        pairs.append((int(rows), name))
    return tuple(sorted(pairs)) + SCHEDULE


def pick_config(rows: int) -> Int8Config:
    """The configuration SCHEDULE (or LLAMAKIT_INT8_MM) gives `rows` rows of x."""
    name = next((n for upto, n in _schedule(os.environ.get("LLAMAKIT_INT8_MM")) if rows <= upto), SCHEDULE[-1][1])
    return CONFIGS[name]


def use_int8_kernel(x: torch.Tensor) -> bool:
    return _use_triton(x) and x.shape[-1] % 16 == 0 and (x.dtype in (torch.bfloat16, torch.float16) or not x.is_cuda)


if HAVE_TRITON:

    @triton.jit
    def _i8_to_f32(w, CVT: tl.constexpr):
        """0: plain cast (Triton's CPU interpreter: its int8 -> bf16 gives NaN, and it runs no PTX); 1: via bf16
        (exact; Triton uses bit tricks on Hopper); 2: inline PTX."""
        if CVT == 2:  # 4 int8 in one register: byte + 128 into the mantissa of 2^23 (exponent byte 0x4B), minus
            # 2^23 + 128; exact, 2 instructions per value where int8 -> bf16 -> fp32 takes about 4
            return tl.inline_asm_elementwise(
                """{
                .reg .b32 t, c;
                xor.b32 t, $4, 0x80808080;
                mov.b32 c, 0x4B000000;
                prmt.b32 $0, t, c, 0x7440;
                prmt.b32 $1, t, c, 0x7441;
                prmt.b32 $2, t, c, 0x7442;
                prmt.b32 $3, t, c, 0x7443;
                sub.f32 $0, $0, 0f4B000080;
                sub.f32 $1, $1, 0f4B000080;
                sub.f32 $2, $2, 0f4B000080;
                sub.f32 $3, $3, 0f4B000080;
                }""", "=r,=r,=r,=r,r", [w], dtype=tl.float32, is_pure=True, pack=4)
        elif CVT == 1:
            return w.to(tl.bfloat16).to(tl.float32)
        else:
            return w.to(tl.float32)

    @triton.jit
    def _gemv_store(acc, m, offs_n, S, Y, P, M, N, stride_ym, pid_k, SPLIT_K: tl.constexpr, HAS_SCALE: tl.constexpr):
        """Row m of the output: sum the [BLOCK_N, BLOCK_K] accumulator over K, scale, store (or the fp32 partial)."""
        out = tl.sum(acc, axis=1)
        mask = (offs_n < N) & (tl.full(offs_n.shape, m, tl.int32) < M)
        if SPLIT_K == 1:
            if HAS_SCALE:
                out = out * tl.load(S + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
            tl.store(Y + m * stride_ym + offs_n, out.to(Y.dtype.element_ty), mask=mask)
        else:
            tl.store(P + (pid_k * M + m) * N + offs_n, out, mask=mask)

    @triton.jit
    def _x_tile(xrow, kk, K, EVEN_K: tl.constexpr):
        if EVEN_K:
            x = tl.load(xrow + kk)
        else:
            x = tl.load(xrow + kk, mask=kk < K, other=0.0)
        return x.to(tl.float32)[None, :]

    @triton.jit
    def _int8_gemv_kernel(X, W, S, Y, P, M, N, K, stride_xm, stride_wn, stride_ym, K_SPLIT,
                          ROWS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr,
                          EVEN_K: tl.constexpr, CVT: tl.constexpr, NUM_STAGES: tl.constexpr,
                          HAS_SCALE: tl.constexpr):
        pid_n = tl.program_id(0)
        pid_k = tl.program_id(1)
        m0 = tl.program_id(2) * ROWS
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        # rows past N (M) re-read the last row, so no load needs a row mask; they are never stored
        w_rows = W + tl.minimum(offs_n, N - 1)[:, None] * stride_wn
        x0 = X + m0 * stride_xm
        x1 = X + tl.minimum(m0 + 1, M - 1) * stride_xm
        x2 = X + tl.minimum(m0 + 2, M - 1) * stride_xm
        x3 = X + tl.minimum(m0 + 3, M - 1) * stride_xm
        acc0 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc1 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc2 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        acc3 = tl.zeros([BLOCK_N, BLOCK_K], tl.float32)
        k_lo = pid_k * K_SPLIT
        k_hi = tl.minimum(k_lo + K_SPLIT, K)
        for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=NUM_STAGES):
            kk = k0 + offs_k
            if EVEN_K:
                w = tl.load(w_rows + kk[None, :])
            else:
                w = tl.load(w_rows + kk[None, :], mask=kk[None, :] < K, other=0)
            w = _i8_to_f32(w, CVT)  # not cvt int -> fp32: a quarter-rate instruction, too slow to keep up
            acc0 += w * _x_tile(x0, kk, K, EVEN_K)
            if ROWS > 1:
                acc1 += w * _x_tile(x1, kk, K, EVEN_K)
            if ROWS > 2:
                acc2 += w * _x_tile(x2, kk, K, EVEN_K)
                acc3 += w * _x_tile(x3, kk, K, EVEN_K)
        _gemv_store(acc0, m0, offs_n, S, Y, P, M, N, stride_ym, pid_k, SPLIT_K, HAS_SCALE)
        if ROWS > 1:
            _gemv_store(acc1, m0 + 1, offs_n, S, Y, P, M, N, stride_ym, pid_k, SPLIT_K, HAS_SCALE)
        if ROWS > 2:
            _gemv_store(acc2, m0 + 2, offs_n, S, Y, P, M, N, stride_ym, pid_k, SPLIT_K, HAS_SCALE)
            _gemv_store(acc3, m0 + 3, offs_n, S, Y, P, M, N, stride_ym, pid_k, SPLIT_K, HAS_SCALE)

    @triton.jit
    def _int8_mm_kernel(X, W, S, Y, P, M, N, K, stride_xm, stride_wn, stride_ym, K_SPLIT,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, SPLIT_K: tl.constexpr):
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        pid_k = tl.program_id(2)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
        k_lo = pid_k * K_SPLIT
        for k0 in range(k_lo, tl.minimum(k_lo + K_SPLIT, K), BLOCK_K):
            kk = k0 + offs_k
            x = tl.load(X + offs_m[:, None] * stride_xm + kk[None, :], mask=(offs_m[:, None] < M) & (kk[None, :] < K),
                        other=0.0)
            w = tl.load(W + offs_n[:, None] * stride_wn + kk[None, :], mask=(offs_n[:, None] < N) & (kk[None, :] < K),
                        other=0)
            acc += tl.dot(x, tl.trans(w.to(x.dtype)))
        mask = (offs_m[:, None] < M) & (offs_n[None, :] < N)
        if SPLIT_K == 1:
            s = tl.load(S + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)
            tl.store(Y + offs_m[:, None] * stride_ym + offs_n[None, :], (acc * s[None, :]).to(Y.dtype.element_ty),
                     mask=mask)
        else:
            tl.store(P + (pid_k * M + offs_m[:, None]) * N + offs_n[None, :], acc, mask=mask)

    @triton.jit
    def _splitk_sum_kernel(P, S, Y, M, N, stride_ym, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr,
                           HAS_SCALE: tl.constexpr):
        """Add the SPLIT_K partial sums in a fixed order (the same result every run), scale, store."""
        m = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < N
        acc = tl.zeros([BLOCK], tl.float32)
        for s in tl.static_range(SPLIT_K):
            acc += tl.load(P + (s * M + m) * N + offs, mask=mask, other=0.0)
        if HAS_SCALE:
            acc = acc * tl.load(S + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(Y + m * stride_ym + offs, acc.to(Y.dtype.element_ty), mask=mask)


def add_parts(part: torch.Tensor, scale: torch.Tensor | None, y: torch.Tensor) -> None:
    """y [M, N] = the fp32 partial sums part [SPLIT_K, M, N] added in a fixed order (times scale [N] when given):
    the second kernel of every split-K matmul here (int8_matmul, fixed_matmul)."""
    split, m, n = part.shape
    _splitk_sum_kernel[(m, triton.cdiv(n, 1024))](part, scale, y, m, n, y.stride(0), SPLIT_K=split, BLOCK=1024,
                                                  HAS_SCALE=scale is not None, num_warps=4)


# Batch 1 with 16-bit weights: the GEMV above, reading bf16 instead of int8, beat cuBLAS on every 7B matrix on an H200
# (one decode step's 5 x 32 + 1 matmuls in CUDA graphs: 3,275 us against 3,708; tools/profile_decode.py --part gemv,
# 2026-11-30): cuBLAS split wo and w2 over K and added the parts in a second kernel.
GEMV16_CONFIG = "gemv_n8_k512_w4_s3"


def use_gemv16(x: torch.Tensor, w: torch.Tensor) -> bool:
    """One row of 16-bit x on CUDA against 16-bit weights of the same dtype (decode at batch 1)."""
    return (x.is_cuda and HAVE_TRITON and x.numel() == x.shape[-1] and x.dtype in (torch.bfloat16, torch.float16)
            and w.dtype == x.dtype and x.shape[-1] % 16 == 0)


def gemv16(x: torch.Tensor, w: torch.Tensor, config: str | Int8Config = GEMV16_CONFIG) -> torch.Tensor:
    """x [..., K] (one row) @ w [N, K].T through the GEMV kernel (use_gemv16 says when)."""
    y = int8_matmul(x.reshape(1, x.shape[-1]), w, None, config)
    return y.view(*x.shape[:-1], w.shape[0])


def int8_matmul_eager(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reference: dequantize, multiply in fp32."""
    return (torch.nn.functional.linear(x.float(), w.float()) * scale.float()).to(x.dtype)


def int8_matmul(x: torch.Tensor, w: torch.Tensor, scale: torch.Tensor | None,
                config: str | Int8Config | None = None) -> torch.Tensor:
    """x [M, K] (bf16/fp16) @ int8 w [N, K].T * scale [N] -> [M, N], reading the int8 weights directly. `config`: a
    name in CONFIGS (default: the SCHEDULE's for M rows). Shapes only on the host: no sync, so CUDA graphs capture
    it (the split-K partials are allocated from the graph's pool). With 16-bit w and scale None (gemv16): x @ w.T,
    the same kernels reading 16-bit weights."""
    if not use_int8_kernel(x):
        return int8_matmul_eager(x, w, scale) if scale is not None else torch.nn.functional.linear(x, w)
    m, k = x.shape
    n = w.shape[0]
    cfg = config if isinstance(config, Int8Config) else CONFIGS[config] if config else pick_config(m)
    x = x.contiguous()
    y = torch.empty((m, n), dtype=x.dtype, device=x.device)
    even_k = k % cfg.block_k == 0
    if cfg.kernel == "gemv":
        rows = min(_pow2(m), GEMV_MAX_ROWS)
        tiles = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, rows))
    else:
        rows = 16 if m <= 16 else (32 if m <= 32 else 64)
        tiles = (triton.cdiv(n, cfg.block_n), triton.cdiv(m, rows))
    split = cfg.split_k or _auto_split(tiles[0] * tiles[1], k, cfg.block_k, x.device)
    k_split = triton.cdiv(triton.cdiv(k, split), cfg.block_k) * cfg.block_k
    part = y if split == 1 else torch.empty((split, m, n), dtype=torch.float32, device=x.device)
    args = (x, w, scale, y, part, m, n, k, x.stride(0), w.stride(0), y.stride(0), k_split)
    if cfg.kernel == "gemv":
        cvt = 0 if not x.is_cuda or w.dtype != torch.int8 else (2 if cfg.cvt == "ptx" and torch.version.hip is None
                                                                  else 1)  # 16-bit w (tools' GEMV sweep): a cast
        _int8_gemv_kernel[(tiles[0], split, tiles[1])](*args, ROWS=rows, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                                                       SPLIT_K=split, EVEN_K=even_k, CVT=cvt,
                                                       NUM_STAGES=cfg.num_stages, num_warps=cfg.num_warps,
                                                       num_stages=cfg.num_stages, HAS_SCALE=scale is not None)
    else:
        assert scale is not None, "16-bit weights: the GEMV only"
        _int8_mm_kernel[(tiles[1], tiles[0], split)](*args, BLOCK_M=rows, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                                                     SPLIT_K=split, num_warps=cfg.num_warps,
                                                     num_stages=cfg.num_stages)
    if split > 1:
        assert scale is not None, "16-bit weights: no split-K"
        add_parts(part, scale, y)
    return y


def _auto_split(tiles: int, k: int, block_k: int, device: torch.device) -> int:
    """Parts of K that give >= 2 programs per SM, each part at least 2 blocks of K long, at most 8 parts."""
    sms = sm_count(device) if device.type == "cuda" else 4  # Triton's CPU interpreter (the tests): 4
    want = triton.cdiv(2 * sms, tiles)
    return max(1, min(8, want, k // (2 * block_k)))


def _pow2(n: int) -> int:
    return 1 << (max(1, n) - 1).bit_length()
