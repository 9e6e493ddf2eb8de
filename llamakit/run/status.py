"""How far is a run? The status file a launcher keeps in its run folder, and `llamakit status` reading it.

Each launcher writes `status.json` in the run folder (atomically: temp file + rename, every few seconds and at
every change of state); a launcher of one node of a multi-node run writes `status.node<R>.json`. The reader sums
all of them, asks the run's lock whether a launcher is alive, and counts the output's rows for a stopped run.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamakit.errors import LlamakitError
from llamakit.run.parts import done_keys
from llamakit.run.progress import Progress, fmt_duration
from llamakit.run.recipe import run_dir_for
from llamakit.run.resume import RunLock
from llamakit.units import human_bytes

STATUS_GLOB = "status*.json"


class StatusFile:
    """The launcher's side: one JSON object, rewritten atomically; readable by every user who can read the run."""

    def __init__(self, run_dir: Path, name: str = "status.json", **fixed: Any):
        self.path = Path(run_dir) / name
        self.data: dict[str, Any] = {"version": 1, "pid": os.getpid(), "host": socket.gethostname(),
                                     "started": time.time(), **fixed}
        self.last = 0.0

    def update(self, progress: Progress | None = None, force: bool = False, **fields: Any) -> None:
        """Record `fields` (and the progress); written at most every 2 s unless forced."""
        self.data.update(fields)
        if progress is not None:
            self.data.update(done=progress.done, todo=progress.total, tokens=progress.tokens,
                             tok_per_s=round(progress.tok_per_s, 2), tok_per_s_1m=round(progress.tok_per_s_1m, 2),
                             eta_s=None if progress.eta_s is None else round(progress.eta_s, 1),
                             gen_seconds=round(progress.gen_seconds, 1))
        now = time.time()
        if not force and now - self.last < 2.0:
            return
        self.last = self.data["updated"] = now
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        try:
            tmp.write_text(json.dumps(self.data, ensure_ascii=False), encoding="utf-8")
            os.replace(tmp, self.path)
        except OSError:  # a full disk must not stop the run for want of a status line
            pass


@dataclass
class RunStatus:
    """What `llamakit status` shows."""

    state: str  # running | stopped | complete
    out_path: str
    log_path: str | None
    total: int | None  # prompts in the input (None: no plan recorded)
    done: int  # rows in the output
    phase: str | None = None  # running: loading | generating | finishing
    tok_per_s: float | None = None
    tok_per_s_1m: float | None = None
    eta_s: float | None = None
    started: float | None = None
    pid: int | None = None
    host: str | None = None
    processes: list[dict[str, Any]] = field(default_factory=list)  # pid, name, gpu, gpu_bytes
    resume: str | None = None
    error: str | None = None

    def lines(self) -> list[str]:
        total = f" of {self.total}" if self.total is not None else ""
        out = [f"{self.state}: {self.out_path}", f"rows         {self.done}{total}"]
        if self.state == "running":
            out[0] += f" ({self.phase})" if self.phase else ""
            rate = (f"{self.tok_per_s_1m:.1f} tok/s last minute, {self.tok_per_s:.1f} tok/s overall"
                    if self.tok_per_s is not None and self.tok_per_s_1m is not None else "-")
            out.append(f"speed        {rate}")
            out.append(f"ETA          {fmt_duration(self.eta_s) if self.eta_s is not None else '- (no rows yet)'}")
        elif self.tok_per_s:
            out.append(f"speed        {self.tok_per_s:.1f} tok/s (generated tokens per second of generation)")
        if self.started:
            who = f" by pid {self.pid}" + (f" on {self.host}" if self.host else "") if self.pid else ""
            out.append(f"started      {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(self.started))}{who}")
        for p in self.processes:
            gpu = f", GPU {p['gpu']} {human_bytes(p['gpu_bytes'])}" if p.get("gpu") is not None else ""
            out.append(f"process      {p['pid']} {p['name']}{gpu}")
        if self.log_path:
            out.append(f"log          {self.log_path}")
        if self.error:
            out.append(f"last error   {self.error}")
        if self.resume:
            out.append(f"resume with  {self.resume}")
        return out


def _gpu_use(pids: set[int]) -> dict[int, tuple[int, int]]:
    """pid -> (GPU index, bytes) for the given processes, through NVML; {} without NVML or GPUs."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # no NVIDIA driver here
        return {}
    found: dict[int, tuple[int, int]] = {}
    try:
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(h):
                if proc.pid in pids:
                    found[proc.pid] = (i, int(proc.usedGpuMemory or 0))
    except Exception:
        pass
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
    return found


def _processes(pid: int) -> list[dict[str, Any]]:
    """The launcher and every process below it, with the GPU memory each holds."""
    import psutil

    try:
        top = psutil.Process(pid)
        procs = [top, *top.children(recursive=True)]
    except psutil.Error:
        return []
    gpu = _gpu_use({p.pid for p in procs})
    out = []
    for p in procs:
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        name = ("llamakit run" if p.pid == pid else "torchrun" if "torch.distributed.run" in cmd
                else "worker" if "llamakit.run.worker" in cmd else p.name())
        g = gpu.get(p.pid)
        out.append({"pid": p.pid, "name": name, "gpu": g[0] if g else None, "gpu_bytes": g[1] if g else 0})
    return out


def last_error(log_path: Path, tail: int = 256 << 10) -> str | None:
    """The launcher's last `error:` line in the log (the one-line message the terminal showed)."""
    try:
        with open(log_path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return None
    found = None
    for line in text.splitlines():
        mark = line.find(" launcher  error: ")
        if mark >= 0:
            found = line[mark + len(" launcher  error: "):]
    return found


def _count_rows(out_path: Path) -> int:
    """Prompts with a row in out_path or in any data-parallel part file next to it (multi-node runs)."""
    try:
        return len(done_keys(out_path))
    except LlamakitError:
        return sum(1 for _ in open(out_path, "rb")) if out_path.is_file() else 0


def target_paths(target: str | Path) -> tuple[Path, Path | None]:
    """(out_path, log_path or None) for an output file, a recipe file or a shipped recipe's name."""
    p = Path(target).expanduser()
    if p.suffix.lower() in (".yaml", ".yml") or (not p.exists() and p.suffix == ""):
        from llamakit.run.recipe import load_recipe, resolve_paths

        paths = resolve_paths(load_recipe(target))
        return paths.out_path, paths.log_path
    return p.resolve(), None


def run_status(target: str | Path) -> RunStatus:
    """running / stopped / complete, rows, speed, ETA, processes and GPU memory, resume command, last error."""
    out_path, log_path = target_paths(target)
    run_dir = run_dir_for(out_path)
    files = sorted(run_dir.glob(STATUS_GLOB)) if run_dir.is_dir() else []
    reports = []
    for f in files:
        try:
            reports.append(json.loads(f.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    plan: dict[str, Any] = {}
    try:
        plan = json.loads((run_dir / "plan.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        pass
    if not reports and not plan and not out_path.exists():
        raise LlamakitError("no run found: neither the output nor its run folder exists",
                            "give the out_path of a run (the .jsonl file) or its recipe", out_path)
    first = reports[0] if reports else {}
    log = Path(first.get("log_path") or plan.get("log_path") or log_path or out_path.with_suffix(".log"))
    total = first.get("total", plan.get("total"))
    st = RunStatus("stopped", str(out_path), str(log), total, 0)
    if reports:
        st.started, st.pid, st.host = min(r.get("started", 0) for r in reports), first.get("pid"), first.get("host")
        cwd, cmd = first.get("cwd"), first.get("command")
        if cmd:
            st.resume = f"cd {shlex.quote(cwd)} && {cmd}" if cwd else cmd
    locks = sorted(p.name for p in run_dir.glob("lock*")) if run_dir.is_dir() else []  # lock.node<R>: several nodes
    holder = next((h for h in (RunLock.holder(run_dir, name) for name in locks) if h is not None), None)
    if holder is not None:
        st.state = "running"
        st.done = sum(r.get("done_before", 0) + r.get("done", 0) for r in reports) if reports else _count_rows(out_path)
        st.phase = first.get("phase")
        st.tok_per_s = sum(r.get("tok_per_s", 0.0) for r in reports)
        st.tok_per_s_1m = sum(r.get("tok_per_s_1m", 0.0) for r in reports)
        etas = [r["eta_s"] for r in reports if r.get("eta_s") is not None]
        st.eta_s = max(etas) - (time.time() - max(r.get("updated", time.time()) for r in reports)) if etas else None
        if st.eta_s is not None:
            st.eta_s = max(0.0, st.eta_s)
        st.pid = int(holder) if holder.isdigit() else st.pid
        st.processes = _processes(st.pid) if st.pid else []
        st.resume = None
        return st
    st.done = _count_rows(out_path)
    states = {r.get("phase") for r in reports}
    if total is not None and st.done >= total and (not reports or states == {"complete"}):
        st.state, st.resume = "complete", None
        st.tok_per_s = sum(r.get("tok_per_s", 0.0) for r in reports) or None
        return st
    st.error = next((r["error"] for r in reports if r.get("error")), None)
    if st.error is None and states & {"starting", "loading", "generating", "finishing"}:
        st.error = "the launcher ended without a message (killed, or the machine restarted)"
    elif st.error is None:
        st.error = last_error(log)
    return st


def status_json(st: RunStatus) -> dict[str, Any]:
    return asdict(st)
