"""`llamakit run` after planning: take the lock, start torchrun, follow its progress, stop it cleanly, report a failure."""

from __future__ import annotations
import json
import logging
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from llamakit.errors import LlamakitError
from llamakit.run.nodes import Nodes
from llamakit.run.output import Summary, clean_run_dir, finish, finish_elsewhere, prepare_output
from llamakit.run.parts import part_files
from llamakit.run.plan import Plan, Setup, describe, free_port, torchrun_argv, worker_env
from llamakit.run.prompts import write_work
from llamakit.run.resume import RunLock

log = logging.getLogger("llamakit.run")

ProgressFn = Callable[["Progress"], None]


@dataclass
class Progress:
    """Rows written so far by this run (all replicas), for the progress bar and the log."""

    done: int
    total: int  # rows this run has to write
    tokens: int  # generated tokens counted since the first finished row (the rate ignores model loading)
    elapsed: float  # seconds since the first finished row
    phase: str  # "loading" until the first row arrives, then "generating"
    all_tokens: int = 0  # every token this run wrote, and the seconds since launch: the rate when all rows
    since_start: float = 0.0  # arrived in one poll (tiny models), where the first-row clock measured nothing

    @property
    def tok_per_s(self) -> float:
        if self.tokens > 0 and self.elapsed > 0:
            return self.tokens / self.elapsed
        return self.all_tokens / self.since_start if self.since_start > 0 else 0.0


def _collect_error(run_dir: Path) -> dict[str, Any] | None:
    """The first failure among the per-rank error files (earliest time, then lowest rank)."""
    errors = []
    for p in run_dir.glob("error.rank*.json"):
        try:
            errors.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    if not errors:
        return None
    return min(errors, key=lambda e: (e.get("time", 0), e.get("rank", 0)))


class _Follower:
    """Counts rows appended to one output file since the run started (all replicas write there on one machine)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.buf = b""
        self.rows = 0
        self.tokens = 0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:  # not there yet (or not a file): nothing to count
            return
        self.offset += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for raw in lines:
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                continue
            self.rows += 1
            self.tokens += int(row.get("completion_tokens", row.get("n_tokens", 0)) or 0)  # score rows: n_tokens


class _PartsFollower:
    """The same count over every part file of out_path (one per replica, over all nodes), new ones included."""

    def __init__(self, out: Path):
        self.out = out
        self.each = {p: _Follower(p) for p in part_files(out)}

    def poll(self) -> None:
        for p in part_files(self.out):
            if p not in self.each:
                self.each[p] = _Follower(p)
                self.each[p].offset = 0  # created by this run: every row counts
        for f in self.each.values():
            f.poll()

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.each.values())

    @property
    def tokens(self) -> int:
        return sum(f.tokens for f in self.each.values())


# ---------------------------------------------------------------- the run


def _log_to(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s launcher  %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def _stop(proc: subprocess.Popen, plan: Plan, why: str) -> LlamakitError:
    """Stop torchrun (it stops its workers), wait for it, and say how to resume."""
    log.info("%s: stopping torchrun and the workers (torchrun's 'SignalException' tracebacks below are its "
             "normal reaction to the stop, not another error)", why)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass
    return LlamakitError(f"{why}; the rows written so far are kept", "re-run the same command to resume",
                         plan.out_path)


def spawn(setup: Setup, on_progress: ProgressFn | None = None, poll_s: float = 0.5) -> int:
    """Start torchrun for the plan, follow the output until it exits; returns torchrun's exit code."""
    plan = setup.plan
    nodes = Nodes.from_dict(getattr(plan, "nodes", None))  # score's plans run on one node
    follower = _PartsFollower(Path(plan.out_path)) if nodes.parts else _Follower(Path(plan.out_path))
    env = worker_env(plan)
    start = time.monotonic()
    waiting = _ConnectWatch(plan) if nodes.multi else None
    last_log = start
    first: tuple[float, int] | None = None
    stopped: list[str] = []

    def on_term(signum: int, frame: object) -> None:  # `kill PID` of the launcher must not orphan the workers
        stopped.append(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    with open(plan.log_path, "ab") as logf:  # torchrun's and the workers' own output goes to the log only
        proc = subprocess.Popen(setup.argv, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        try:
            while True:
                if stopped:
                    raise _stop(proc, plan, f"stopped by {stopped[0]}")
                rc = proc.poll()
                follower.poll()
                now = time.monotonic()
                if follower.rows and first is None:
                    first = (now, follower.tokens)
                # the rate counts from the first finished row, so model loading does not dilute it
                prog = Progress(follower.rows, plan.pending, follower.tokens - (first[1] if first else 0),
                                now - first[0] if first else 0.0, "generating" if follower.rows else
                                (waiting.phase(now - start) if waiting else "loading"),
                                follower.tokens, now - start)
                if on_progress:
                    on_progress(prog)
                if now - last_log >= 30 or (rc is not None and follower.rows):
                    log.info("progress: %d/%d rows, %d tokens, %.1f tok/s", prog.done, prog.total, follower.tokens,
                             prog.tok_per_s)
                    last_log = now
                if rc is not None:
                    return rc
                time.sleep(poll_s)
        except KeyboardInterrupt:  # Ctrl-C: torchrun got the same SIGINT from the terminal
            raise _stop(proc, plan, "interrupted (Ctrl-C)") from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


class _ConnectWatch:
    """Over several nodes: when this node's workers have not joined the others' process group after hint_after_s
    (no 'model-parallel rank' line in this node's log), say once what usually causes it: the start hangs when the
    nodes cannot reach each other, and gloo and NCCL say nothing until their own timeout, minutes later."""

    def __init__(self, plan: Plan, hint_after_s: float = 60.0):
        self.hint_after_s = hint_after_s
        self.log_path = Path(plan.log_path)
        self.offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self.joined = False
        self.warned = False
        self.master = (plan.nodes.get("master_addr") or plan.nodes.get("rdzv_endpoint") or "HOST")

    def phase(self, elapsed: float) -> str:
        if self.joined or elapsed < self.hint_after_s:
            return "loading"
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                self.joined = b"model-parallel rank" in f.read()
        except OSError:
            return "loading"
        if self.joined:
            return "loading"
        if not self.warned:
            self.warned = True
            log.warning("after %.0f s this node's workers have not joined the other nodes: are all nodes started? If "
                        "they are, the nodes cannot reach each other: wrong network interface (export "
                        "NCCL_SOCKET_IFNAME=IFACE GLOO_SOCKET_IFNAME=IFACE), a firewall, or the wrong --master-addr; "
                        "`llamakit doctor --master-addr %s` on each node shows which", elapsed, self.master)
        return "waiting for the other nodes (see the log)"


def _worker_error(rc: int, plan: Plan) -> LlamakitError:
    """The error to show when torchrun failed: the first failing rank's own line, once."""
    err = _collect_error(Path(plan.run_dir))
    if err is None:
        log.error("torchrun exited with code %d and no worker reported an error", rc)
        return LlamakitError(f"the worker processes failed (torchrun exit code {rc}) without a message",
                             "see the end of the log; re-run the same command to resume", plan.log_path)
    log.error("rank %s failed: %s", err.get("rank"), err.get("message"))
    what = err.get("what") or err.get("message", "worker failed")
    fix = err.get("fix") or f"see the traceback in the log ({plan.log_path})"
    if "resume" not in fix:
        fix += "; then re-run to resume"
    return LlamakitError(f"rank {err.get('rank')}: {what}", fix, err.get("where"), err.get("line"))

def merges_here(plan: Plan, nodes: Nodes, started: bool) -> bool:
    """Whether this launcher checks and orders out_path at the end: always on one machine; over several nodes the
    one whose workers merged the parts (they leave merged.json), or node 0 when nothing was started; never for a
    share of an array (the other shares may still be writing: `llamakit merge` does it)."""
    if nodes.share is not None:
        return False
    if not nodes.multi:
        return True
    if not started:
        return bool(nodes.is_merger)
    try:
        marker = json.loads((Path(plan.run_dir) / "merged.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    return marker.get("launcher") == plan.launcher


def execute(setup: Setup, on_progress: ProgressFn | None = None) -> Summary:
    """Write the run folder, spawn the ranks, then check and reorder the output; raises the first rank's error."""
    plan = setup.plan
    handler = _log_to(Path(plan.log_path))
    t0 = time.monotonic()
    try:
        nodes = Nodes.from_dict(plan.nodes)
        with RunLock(Path(plan.run_dir), Path(plan.out_path), nodes.lock_name):
            log.info("llamakit run %s%s", setup.loaded.path, f" ({nodes.label()})" if nodes.parts else "")
            for line in describe(plan, setup.argv):
                log.info("plan: %s", line)
            skipped = any(t.skipped for t in setup.todo)
            start = plan.pending > 0 or (nodes.parts and skipped)  # with part files the replicas write skipped rows
            if plan.pending or skipped:
                # this run writes rows: record its settings before the first row (a resume compares them)
                plan.master_port = free_port()  # fresh: the one picked while planning may be taken by now
                setup.argv = torchrun_argv(plan, setup.plan_file)
                plan.save(setup.plan_file)
                if setup.plan_file.name != "plan.json":  # over several nodes: this node's own, and the record
                    plan.save(Path(plan.run_dir) / "plan.json")
            n_skipped = prepare_output(setup)
            if start:
                write_work(setup.todo, Path(plan.work_path), with_skipped=nodes.parts)
                (Path(plan.run_dir) / "merged.json").unlink(missing_ok=True)
                log.info("starting %d of %d processes: %s", plan.local_nproc, plan.nproc, " ".join(setup.argv))
                rc = spawn(setup, on_progress)
                if rc != 0:
                    raise _worker_error(rc, plan)
            if merges_here(plan, nodes, start):
                summary = finish(setup, n_skipped, t0)
                clean_run_dir(Path(plan.run_dir))
            else:
                summary = finish_elsewhere(setup, nodes, t0)
        return summary
    except LlamakitError as e:
        log.error("error: %s", e.one_line())
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
