"""Compile every Triton kernel of the decode step for other GPU generations, on the GPU at hand, and compare each
kernel's shared memory with what that generation allows per block.

The users' server has RTX A6000s (sm_86, 99 KiB of shared memory per block); the device machines are Hopper
(227 KiB). A kernel whose tiles fit a Hopper but not an Ampere card fails only on the users' server, at run time
("out of resources: shared memory"). This compiles (never launches) the kernels through their real wrappers with
7B, 13B MP=2 and 70B-style GQA MP=2 shapes at the batch sizes the engine uses, for each target in a fresh process
(Triton fixes the target per device on the first compile).

Usage (on a CUDA machine, from a checkout): PYTHONPATH=$PWD python3 tools/triton_arch_check.py [CC ...]
Prints one JSON line per target and a verdict line; exits 1 if any kernel does not fit a target.
"""

from __future__ import annotations

import json
import subprocess
import sys

# Largest shared memory one block may opt into, per compute capability (CUDA programming guide, table of
# technical specifications): A100 163 KiB, RTX A6000 / RTX 3090 / L40 / RTX 4090 99 KiB, H100 / H200 227 KiB.
SMEM_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
CARDS = {80: "A100", 86: "RTX A6000 / RTX 3090", 89: "L40 / RTX 4090", 90: "H100 / H200"}


def probe(cc: int) -> dict:
    """In this process: compile for sm_<cc>, call every wrapper, collect (kernel, config) -> shared bytes."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.runtime import jit

    triton.runtime.driver.active.get_current_target = lambda: GPUTarget("cuda", cc, 32)
    seen: dict[str, int] = {}
    orig = jit.JITFunction.run

    def run(self, *args, grid, warmup, **kw):  # compile only: the cubin is for another GPU
        k = orig(self, *args, grid=grid, warmup=True, **kw)
        cfg = ",".join(f"{n}={v}" for n, v in sorted(kw.items()) if isinstance(v, (int, bool)))
        seen[f"{self.__name__}[{cfg}]"] = int(k.metadata.shared)
        return k

    jit.JITFunction.run = run
    from llamakit.model import fixed_matmul as F
    from llamakit.model import int8_kernels as Q
    from llamakit.model import kernels as K

    F.smem_per_block = lambda device: SMEM_LIMIT[cc]  # the target's, not this GPU's: the pipeline depth follows it

    dev, bf = "cuda", torch.bfloat16
    # (heads, kv heads, dim) per rank: 7B MP=1, 13B MP=2, 70B-style GQA MP=2
    for h, hkv, dim in [(32, 32, 4096), (20, 20, 2560), (32, 4, 4096)]:
        d = 128
        for b in (1, 16, 64, 128, 256):
            for L in (512, 2048):
                q = torch.empty(b, h, d, device=dev, dtype=bf)
                kc = torch.empty(1 + b * L // 16, hkv, 16, d, device=dev, dtype=bf)  # paged: blocks of 16 tokens
                table = torch.zeros(b, L // 16, dtype=torch.int32, device=dev)
                K.decode_attention(q, kc, kc, table, torch.ones(b, dtype=torch.long, device=dev))
                # kv_cache_dtype fp8: the e4m3 conversion in hardware from sm_89, with integer ops before
                k8 = torch.empty(kc.shape, device=dev, dtype=torch.float8_e4m3fn)
                K.decode_attention(q, k8, k8, table, torch.ones(b, dtype=torch.long, device=dev), fp8_native=cc >= 89)
            x = torch.empty(b, dim, device=dev, dtype=bf)
            K.add_rmsnorm(x, x, torch.empty(dim, device=dev, dtype=bf), 1e-6)
            K.add_rmsnorm(x, None, torch.empty(dim, device=dev, dtype=bf), 1e-6)
            qkv = torch.empty(b, (h + 2 * hkv) * d, device=dev, dtype=bf)
            cache = torch.empty(1 + b * 32, hkv, 16, d, device=dev, dtype=bf)
            tab = torch.empty(4096, d // 2, device=dev, dtype=torch.float32)
            table = torch.zeros(b, 32, dtype=torch.int32, device=dev)
            K.rope_store(qkv, torch.zeros(b, dtype=torch.long, device=dev), tab, tab, cache, cache, table, h, hkv)
            c8 = torch.empty(cache.shape, device=dev, dtype=torch.float8_e4m3fn)
            K.rope_store(qkv, torch.zeros(b, dtype=torch.long, device=dev), tab, tab, c8, c8, table, h, hkv)
            K.silu_mul(torch.empty(b, 2 * 11008, device=dev, dtype=bf), 11008)
        for m in (1, 2, 4, 16, 32, 64, 256):  # each config of the schedule at the batch sizes it serves
            Q.int8_matmul(torch.empty(m, dim, device=dev, dtype=bf), torch.empty(4096, dim, device=dev,
                          dtype=torch.int8), torch.empty(4096, device=dev, dtype=torch.float32))
        for cfg in F.TILES:  # batch_invariant's matmul: every tile, with and without split-K, 16-bit weights
            for split in (1, 2):
                F.fixed_matmul(torch.empty(300, dim, device=dev, dtype=bf), torch.empty(4096, dim, device=dev,
                               dtype=bf), cfg, split)
    return {"cc": cc, "triton": triton.__version__, "kernels": seen}


def main(argv: list[str]) -> int:
    if argv and argv[0] == "--probe":
        print(json.dumps(probe(int(argv[1]))))
        return 0
    targets = [int(a) for a in argv] or sorted(SMEM_LIMIT)
    bad = 0
    for cc in targets:
        res = subprocess.run([sys.executable, __file__, "--probe", str(cc)], capture_output=True, text=True)
        if res.returncode != 0:
            print(f"sm_{cc}: compile failed:\n{res.stderr[-3000:]}")
            bad += 1
            continue
        data = json.loads(res.stdout.strip().splitlines()[-1])
        limit = SMEM_LIMIT.get(cc)
        worst = max(data["kernels"].items(), key=lambda kv: kv[1])
        over = {k: v for k, v in data["kernels"].items() if limit is not None and v > limit}
        bad += bool(over)
        print(json.dumps({"cc": cc, "cards": CARDS.get(cc, "?"), "limit_bytes": limit, "configs": len(data["kernels"]),
                          "largest": {worst[0]: worst[1]}, "over_limit": over, "triton": data["triton"]}))
    print("all kernels fit every target" if not bad else f"{bad} target(s) with kernels that do not fit")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
