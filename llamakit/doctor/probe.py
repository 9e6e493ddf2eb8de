"""Active tests run in child processes (`python -m llamakit.doctor.probe matmul|allreduce ...`); prints one JSON line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Any

from llamakit.lifeline import PARENT_ENV, die_with_parent


def matmul(device: int, n: int = 4096, iters: int = 10) -> dict[str, Any]:
    """Multiply two random n x n matrices on one GPU, compare with an fp32 result, and time it."""
    import torch

    torch.cuda.set_device(device)
    major, _ = torch.cuda.get_device_capability(device)
    dt = torch.bfloat16 if major >= 8 else torch.float16
    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(n, n, device="cuda", dtype=dt, generator=g)
    b = torch.randn(n, n, device="cuda", dtype=dt, generator=g)
    c = a @ b
    ref = a.float() @ b.float()
    err = ((c.float() - ref).abs().max() / ref.abs().max()).item()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(iters):
        c = a @ b
    torch.cuda.synchronize()
    dt_s = time.perf_counter() - t0
    ok = err < 2e-2 and bool(torch.isfinite(c).all().item())
    return {"device": device, "ok": ok, "max_err": err, "tflops": 2 * n**3 * iters / dt_s / 1e12,
            "error": None if ok else f"wrong result: relative error {err:.3g}"}


def _worker(rank: int, world: int, backend: str, port: int, nbytes: int, iters: int, out: str) -> None:
    die_with_parent()  # a rank ends with its probe, the probe with doctor
    import datetime

    import torch
    import torch.distributed as dist

    result: dict[str, Any] = {}
    if backend == "nccl":
        torch.cuda.set_device(rank)
        dev = torch.device("cuda", rank)
        if rank == 0:
            n = torch.cuda.device_count()
            result["peers"] = {f"{i}-{j}": bool(torch.cuda.can_device_access_peer(i, j))
                               for i in range(n) for j in range(n) if i < j}
    else:
        dev = torch.device("cpu")
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    try:
        x = torch.full((nbytes // 4,), float(rank + 1), dtype=torch.float32, device=dev)
        dist.all_reduce(x)
        expect = world * (world + 1) / 2
        good = torch.tensor([1.0 if bool((x == expect).all().item()) else 0.0], device=dev)
        dist.all_reduce(good, op=dist.ReduceOp.MIN)  # every rank's copy must be right
        y = torch.zeros(nbytes // 4, dtype=torch.float32, device=dev)
        for _ in range(2):
            dist.all_reduce(y)
        if backend == "nccl":
            torch.cuda.synchronize()
        dist.barrier()
        t0 = time.perf_counter()
        for _ in range(iters):
            dist.all_reduce(y)
        if backend == "nccl":
            torch.cuda.synchronize()
        secs = (time.perf_counter() - t0) / iters
        if rank == 0:
            algbw = nbytes / secs / 1e9
            result.update({"ok": good.item() == 1.0, "world": world, "backend": backend, "bytes": nbytes,
                           "seconds": secs, "algbw_gbps": algbw,
                           "busbw_gbps": algbw * 2 * (world - 1) / world if world > 1 else None,
                           "error": None if good.item() == 1.0 else f"wrong sum (expected {expect} everywhere)"})
            if backend == "nccl":
                v = torch.cuda.nccl.version()
                result["nccl_version"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
            with open(out, "w", encoding="utf-8") as fh:
                json.dump(result, fh)
    finally:
        dist.destroy_process_group()


def allreduce(backend: str, world: int, port: int, nbytes: int, iters: int) -> dict[str, Any]:
    """Spawn `world` processes that all-reduce a known tensor, check the sum on every rank and time it."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        # NCCL ranks start fresh (spawn), as torchrun's do; the CPU/gloo ranks may fork: nothing here touched CUDA,
        # and it saves each rank a torch import.
        os.environ[PARENT_ENV] = str(os.getpid())  # the ranks check that this probe still runs
        mp.start_processes(_worker, args=(world, backend, port, nbytes, iters, out), nprocs=world, join=True,
                           start_method="spawn" if backend == "nccl" else "fork")
        with open(out, encoding="utf-8") as fh:
            return json.load(fh)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llamakit.doctor.probe")
    sub = p.add_subparsers(dest="what", required=True)
    m = sub.add_parser("matmul")
    m.add_argument("--device", type=int, default=0)
    m.add_argument("--n", type=int, default=4096)
    a = sub.add_parser("allreduce")
    a.add_argument("--backend", choices=["nccl", "gloo"], required=True)
    a.add_argument("--world", type=int, required=True)
    a.add_argument("--port", type=int, required=True)
    a.add_argument("--bytes", type=int, default=64 << 20)
    a.add_argument("--iters", type=int, default=10)
    args = p.parse_args(argv)
    try:
        if args.what == "matmul":
            res = matmul(args.device, args.n)
        else:
            res = allreduce(args.backend, args.world, args.port, args.bytes, args.iters)
    except BaseException as e:  # noqa: BLE001 - the parent turns this into a failed row
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        msg = (lines[-1] if lines else "")[:400]  # a child's traceback ends with its exception line
        res = {"ok": False, "error": f"{type(e).__name__}: {msg}"}
    sys.stdout.write("PROBE-RESULT " + json.dumps(res) + "\n")
    sys.stdout.flush()
    return 0 if res.get("ok") else 1


if __name__ == "__main__":
    die_with_parent()
    sys.exit(main())
