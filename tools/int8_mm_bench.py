"""Time every int8 matmul configuration (llamakit.model.int8_kernels.CONFIGS) on 7B's decode shapes against the
kernel's old configuration, bf16 cuBLAS and dequantize + cuBLAS, to pick int8_kernels.SCHEDULE on a GPU.

Each variant runs `--reps` times inside one CUDA graph (as the engine's decode graphs run it: no launch overhead
from Python), cycling through enough copies of the weights to exceed the L2 cache, so every call streams its weights
from memory as one layer after another does in a decode step. CUDA events time the replay after a warm-up replay.
Prints JSON lines: the device, one line per (rows, shape, variant) with microseconds and weight bytes per second,
one per (rows, variant) with the 7B decode step's matmul time (32 x (wqkv + wo + w13 + w2) + output), and one per
rows naming the fastest config next to the current SCHEDULE's. Takes < 60 s on an H200.

Usage (on a CUDA machine, from a checkout): PYTHONPATH=$PWD python3 tools/int8_mm_bench.py [--rows 1,8] [--reps 200]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

SHAPES = {"wqkv": (12288, 4096), "wo": (4096, 4096), "w13": (22016, 4096), "w2": (4096, 11008), "output": (32000, 4096)}
LAYERS = 32  # 7B: the output layer once, the four layer matmuls 32 times per decode step
OLD = {True: "dot_n32_k128_w4_s4", False: "dot_n64_k128_w4_s4"}  # the kernel's config before the GEMV (<= 16 rows)


def emit(**row) -> None:
    print(json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in row.items()}),
          flush=True)


def time_graph(calls: list, reps: int) -> float:
    """Microseconds per call: `reps` calls (round robin over `calls`) captured in one CUDA graph, replayed."""
    for c in calls:
        c()  # compile / cuBLAS heuristics outside the capture
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            calls[i % len(calls)]()
    g.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    g.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) * 1000.0 / reps


def copy_bandwidth() -> float:
    """Device-to-device copy of 1 GiB, bytes read + written per second: the practical limit."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    us = time_graph([lambda: b.copy_(a)], 10)
    return 2 * a.numel() / us / 1e3


def main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="1,8", help="rows of x (decode batch sizes), comma separated")
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--configs", default="", help="comma separated config names (default: all)")
    args = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("int8_mm_bench: needs a CUDA GPU (run it on the device machine)", file=sys.stderr)
        return 2
    import triton

    from llamakit.model import int8_kernels as Q

    t0 = time.time()
    props = torch.cuda.get_device_properties(0)
    l2 = getattr(props, "L2_cache_size", 50 << 20)
    names = [c for c in args.configs.split(",") if c] or list(Q.CONFIGS)
    emit(tool="int8_mm_bench", device=props.name, torch=torch.__version__, triton=triton.__version__,
         date=datetime.date.today().isoformat(), l2_mib=round(l2 / 2**20), copy_gbps=round(copy_bandwidth(), 1),
         reps=args.reps, schedule={str(r): n for r, n in Q._schedule(os.environ.get("LLAMAKIT_INT8_MM"))})
    torch.manual_seed(0)
    step: dict[tuple[int, str], float] = {}
    wrong: set[tuple[int, str]] = set()  # (rows, variant) whose result differs from the eager twin: never "fastest"
    for m in [int(r) for r in args.rows.split(",")]:
        default = Q.pick_config(m).name
        best_shape: dict[str, tuple[float, str]] = {}
        for shape, (n, k) in SHAPES.items():
            copies = max(2, math.ceil(3 * l2 / (n * k)))  # int8 copies that together exceed the L2 cache 3 times
            ws = [torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda") for _ in range(copies)]
            scale = torch.rand(n, device="cuda") * 1e-3 + 1e-4
            x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
            ref = Q.int8_matmul_eager(x.float(), ws[0], scale)
            variants: dict[str, list] = {}
            for name in names:
                cfg = Q.CONFIGS[name]
                if cfg.kernel == "gemv" and m > Q.GEMV_MAX_ROWS:
                    continue  # would read the weights once per 4 rows
                variants[name] = [lambda w=w, name=name: Q.int8_matmul(x, w, scale, name) for w in ws]
            wb = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(max(2, math.ceil(copies / 2)))]
            variants["bf16_linear"] = [lambda w=w: F.linear(x, w) for w in wb]
            variants["dequant_linear"] = [lambda w=w: F.linear(x, w.to(torch.bfloat16)) * scale.to(torch.bfloat16)
                                          for w in ws]
            for name, calls in variants.items():
                row = dict(m=m, shape=shape, n=n, k=k, variant=name, default=name == default,
                           old=name == OLD[m <= 16], at_s=round(time.time() - t0, 1))
                try:
                    us = time_graph(calls, args.reps)
                    nbytes = n * k * (2 if name == "bf16_linear" else 1)
                    row.update(us=round(us, 2), weight_bytes=nbytes, weight_gbps=round(nbytes / us / 1e3, 1))
                    if name != "bf16_linear":  # (other weights)
                        err = ((calls[0]().float() - ref.float()).norm() / ref.float().norm()).item()
                        row["rel_err"] = float(f"{err:.2e}")
                        if not err < 1e-2:
                            wrong.add((m, name))
                    step[m, name] = step.get((m, name), 0.0) + us * (1 if shape == "output" else LAYERS)
                    if name in Q.CONFIGS and (m, name) not in wrong and us < best_shape.get(shape, (math.inf, ""))[0]:
                        best_shape[shape] = (us, name)
                except Exception as e:  # a config that does not compile or fit: say so, time the others
                    row.update(error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
                    step[m, name] = math.inf
                emit(**row)
            del ws, wb, variants
            torch.cuda.empty_cache()
        int8_bytes = sum(n * k * (1 if s == "output" else LAYERS) for s, (n, k) in SHAPES.items())
        for (mm, name), us in sorted(step.items(), key=lambda kv: kv[1]):
            if mm == m and math.isfinite(us):
                nbytes = int8_bytes * (2 if name == "bf16_linear" else 1)
                emit(m=m, variant=name, step_matmul_us=round(us, 1), weight_gbps=round(nbytes / us / 1e3, 1),
                     matmul_only_tok_s=round(1e6 / us * m, 1), default=name == default, old=name == OLD[m <= 16],
                     wrong=(m, name) in wrong)
        timed = {name: us for (mm, name), us in step.items()
                 if mm == m and name in Q.CONFIGS and (mm, name) not in wrong}
        fastest = min(timed, key=timed.get)
        per_shape_us = sum(best_shape[s][0] * (1 if s == "output" else LAYERS) for s in best_shape)
        emit(m=m, fastest=fastest, fastest_step_us=round(timed[fastest], 1), default=default,
             default_step_us=round(timed.get(default, math.inf), 1),
             old=OLD[m <= 16], old_step_us=round(timed.get(OLD[m <= 16], math.inf), 1),
             best_per_shape={s: v[1] for s, v in best_shape.items()}, best_per_shape_step_us=round(per_shape_us, 1),
             change_to=None if fastest == default else f"int8_kernels.SCHEDULE: the entry for {m} rows -> {fastest!r}")
    emit(seconds=round(time.time() - t0, 1))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
