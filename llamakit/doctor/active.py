"""Active tests: start the probe in child processes with timeouts and turn their JSON line into facts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from llamakit.doctor.facts import AllreduceResult, Facts, MatmulResult, find_free_port
from llamakit.lifeline import child_env

_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding the llamakit package


@dataclass
class ProbeRun:
    """What came back from one probe process."""

    result: dict | None
    seconds: float
    timed_out: bool
    tail: str


def _env() -> dict[str, str]:
    env = child_env()  # the probe ends with doctor (parent-death signal), its ranks with the probe
    env["PYTHONPATH"] = _ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def start_probe(args: list[str]) -> subprocess.Popen:
    """Start `python -m llamakit.doctor.probe ARGS` in its own process group (so a hang can be killed whole)."""
    return subprocess.Popen([sys.executable, "-m", "llamakit.doctor.probe", *args], env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def finish_probe(proc: subprocess.Popen, timeout: float, started: float) -> ProbeRun:
    """Wait for a probe; on timeout kill its whole process group (the spawned ranks too)."""
    try:
        out, _ = proc.communicate(timeout=max(0.1, timeout - (time.monotonic() - started)))
        timed_out = False
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            proc.kill()
        out, _ = proc.communicate()
        timed_out = True
    result = None
    for line in (out or "").splitlines():
        if line.startswith("PROBE-RESULT "):
            try:
                result = json.loads(line[len("PROBE-RESULT "):])
            except json.JSONDecodeError:
                result = None
    tail = " ".join((out or "").strip().splitlines()[-3:])[-300:]
    return ProbeRun(result, time.monotonic() - started, timed_out, tail)


def run_matmul(devices: list[int], timeout: float = 90.0) -> list[MatmulResult]:
    """One probe per GPU, all at once; `devices` are CUDA ordinals (after CUDA_VISIBLE_DEVICES)."""
    started = time.monotonic()
    procs = [(d, start_probe(["matmul", "--device", str(d)])) for d in devices]
    out = []
    for d, p in procs:
        run = finish_probe(p, timeout, started)
        r = run.result
        if run.timed_out:
            out.append(MatmulResult(d, False, seconds=run.seconds, error=f"timed out after {timeout:.0f} s"))
        elif r is None:
            out.append(MatmulResult(d, False, seconds=run.seconds, error=f"probe died: {run.tail or 'no output'}"))
        else:
            out.append(MatmulResult(d, bool(r.get("ok")), r.get("tflops"), r.get("max_err"), run.seconds,
                                    r.get("error")))
    return out


def run_allreduce(backend: str, world: int, timeout: float = 120.0, nbytes: int | None = None,
                  iters: int | None = None) -> AllreduceResult:
    """All-reduce across `world` spawned processes (NCCL: one per GPU; gloo: CPU) and check the sum."""
    nbytes = nbytes or ((256 << 20) if backend == "nccl" else (16 << 20))
    iters = iters or (20 if backend == "nccl" else 5)
    port = find_free_port() or 29511
    started = time.monotonic()
    proc = start_probe(["allreduce", "--backend", backend, "--world", str(world), "--port", str(port),
                        "--bytes", str(nbytes), "--iters", str(iters)])
    run = finish_probe(proc, timeout, started)
    if run.timed_out:
        return AllreduceResult(backend, world, False, nbytes, run.seconds, timed_out=True,
                               error=f"no answer within {timeout:.0f} s")
    r = run.result
    if r is None:
        return AllreduceResult(backend, world, False, nbytes, run.seconds, error=f"probe died: {run.tail}")
    return AllreduceResult(backend, world, bool(r.get("ok")), int(r.get("bytes") or nbytes),
                           float(r.get("seconds") or 0.0), r.get("busbw_gbps"), r.get("algbw_gbps"),
                           r.get("nccl_version"), r.get("error"), False, dict(r.get("peers") or {}))


def allreduce_plan(f: Facts) -> tuple[str, int] | None:
    """NCCL across every visible GPU when torch can use them, else gloo with 2 CPU processes; None without torch."""
    if not f.torch_version or not f.dist_available:
        return None
    if f.gpus and f.torch_cuda and f.nccl_available:
        return "nccl", len(f.gpus)
    if f.gloo_available:
        return "gloo", 2
    return None


def run_active(f: Facts, names: set[str], timeout: float = 120.0) -> None:
    """Run the active tests named in `names` and store their results in the facts."""
    f.active_run = sorted(names)
    if "gpu-matmul" in names and f.gpus and f.torch_cuda:
        f.matmul = run_matmul(list(range(len(f.gpus))), timeout=min(timeout, 90.0))
    elif "gpu-matmul" in names and f.gpus:
        f.matmul = [MatmulResult(g.index, False, error="CUDA is not available to this torch (not a CUDA build)") for g in f.gpus]
    if "allreduce" in names:
        plan = allreduce_plan(f)
        if plan:
            f.allreduce = run_allreduce(plan[0], plan[1], timeout=timeout)
