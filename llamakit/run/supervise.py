"""`llamakit run` after planning: take the lock, start torchrun, follow its progress, stop it cleanly, report a failure.

Every process of a run ends with the launcher: torchrun starts through llamakit.lifeline (parent-death signal) in a
session of its own, and each worker sets the same signal on itself, so kill -9 of the launcher or of torchrun
leaves nothing behind. A terminal's Ctrl-C and hang-up reach only the launcher, which decides: Ctrl-C or SIGTERM
stops the run (rows kept), a hang-up (SIGHUP: the SSH session closed) does not: the run finishes with its output
sent to the log.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import select
import shlex
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Callable

from llamakit.errors import LlamakitError
from llamakit.lifeline import child_env, guarded
from llamakit.run.nodes import Nodes
from llamakit.run.output import Summary, clean_run_dir, disk_full_error, finish, finish_elsewhere, prepare_output
from llamakit.run.parts import part_files
from llamakit.run.plan import Plan, Setup, describe, free_port, torchrun_argv, worker_env
from llamakit.run.progress import Progress, Tracker
from llamakit.run.prompts import write_work
from llamakit.run.resume import RunLock
from llamakit.run.status import StatusFile
from llamakit.run.terminal import detach_terminal, hung_up_early
from llamakit.units import human_bytes, plural

log = logging.getLogger("llamakit.run")

ProgressFn = Callable[[Progress], None]


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


# ---------------------------------------------------------------- signals and the log


class _QuietFileHandler(logging.FileHandler):
    """The run's log; on a full disk a record is dropped instead of printing logging's traceback on the terminal."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        pass

    def close(self) -> None:
        try:
            super().close()
        except OSError:  # its last flush, on a full disk
            pass


def _log_to(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = _QuietFileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s launcher  %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


class Signals:
    """While a run goes on: SIGTERM stops it like Ctrl-C; SIGHUP detaches the terminal and lets it finish."""

    def __init__(self, plan: Plan):
        self.plan = plan
        self.stop: list[str] = []
        self.hung_up = False
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> "Signals":
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, self._term),
                             signal.SIGHUP: signal.signal(signal.SIGHUP, self._hang_up)}
        if hung_up_early():  # during start-up and planning (run.terminal): the terminal is already detached
            self.hung_up = True
            log.info("the terminal hung up (SIGHUP) while the run was being planned: the run goes on; follow it "
                     "with `llamakit status %s` or `tail -f %s`", shlex.quote(self.plan.out_path),
                     shlex.quote(self.plan.log_path))
        return self

    def _term(self, signum: int, frame: object) -> None:
        self.stop.append(signal.Signals(signum).name)

    def _hang_up(self, signum: int, frame: object) -> None:
        if self.hung_up:
            return
        self.hung_up = True
        detach_terminal()
        log.info("the terminal hung up (SIGHUP): the run goes on; follow it with `llamakit status %s` or "
                 "`tail -f %s`", shlex.quote(self.plan.out_path), shlex.quote(self.plan.log_path))

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------- the run


def _stop(proc: subprocess.Popen, plan: Plan, why: str) -> LlamakitError:
    """Stop torchrun (it stops its workers), wait for it, and say how to resume; a second Ctrl-C ends it at once."""
    log.info("%s: stopping torchrun and the workers (torchrun's 'SignalException' tracebacks below are its "
             "normal reaction to the stop, not another error)", why)
    again: list[int] = []

    def at_once(signum: int, frame: object) -> None:
        again.append(signum)
        try:
            proc.kill()  # the workers end with it (parent-death signal)
        except ProcessLookupError:
            pass

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, at_once) if main else None
    try:
        proc.terminate()
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass
    finally:
        if main:
            signal.signal(signal.SIGINT, previous)
    if again:
        why += ", and again: stopped at once"
        log.info("a second interrupt: torchrun and the workers were killed at once")
    return LlamakitError(f"{why}; the rows written so far are kept", "re-run the same command to resume",
                         plan.out_path)


def _generation_began(run_dir: Path) -> float | None:
    """When the first replica's engine was ready (its worker leaves a `ready.dp<R>` mark), as wall time."""
    times = []
    for p in run_dir.glob("ready.dp*"):
        try:
            times.append(p.stat().st_mtime)
        except OSError:
            continue
    return min(times) if times else None


def _sleep_unless_exits(proc: subprocess.Popen, seconds: float) -> None:
    """Sleep up to `seconds`, but return as soon as `proc` exits: the run ends when torchrun does, not up to a poll
    later. Ctrl-C raises KeyboardInterrupt here at once, as in time.sleep (Popen.wait would first wait up to 0.25 s
    for the child, and a second Ctrl-C in that time would not reach _stop's kill-at-once handler)."""
    if proc.returncode is not None:  # reaped already: its pid may be another process's by now
        return
    if hasattr(os, "pidfd_open"):  # Linux: the pid's file descriptor becomes readable when it exits
        try:
            fd = os.pidfd_open(proc.pid)
        except OSError:  # a kernel without pidfd: poll instead
            pass
        else:
            try:
                select.select([fd], [], [], seconds)
            finally:
                os.close(fd)
            return
    deadline = time.monotonic() + seconds
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def spawn(setup: Setup, on_progress: ProgressFn | None = None, poll_s: float = 0.5, tracker: Tracker | None = None,
          status: StatusFile | None = None, signals: Signals | None = None) -> int:
    """Start torchrun for the plan, follow the output until it exits; returns torchrun's exit code (the last
    progress is tracker.last)."""
    plan = setup.plan
    run_dir = Path(plan.run_dir)
    nodes = Nodes.from_dict(getattr(plan, "nodes", None))  # score's plans run on one node
    follower = _PartsFollower(Path(plan.out_path)) if nodes.parts else _Follower(Path(plan.out_path))
    tracker = tracker or Tracker(plan.pending)
    env = child_env(worker_env(plan))
    waiting = _ConnectWatch(plan) if nodes.multi else None
    own = Signals(plan).__enter__() if signals is None else None  # score calls spawn without execute's handlers
    signals = signals or own
    try:
        with open(plan.log_path, "ab") as logf:  # torchrun's and the workers' own output goes to the log only
            proc = subprocess.Popen(guarded(setup.argv), env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
                                    start_new_session=True)
            if status:
                status.update(force=True, torchrun_pid=proc.pid, phase="loading")
            try:
                while True:
                    if signals and signals.stop:
                        raise _stop(proc, plan, f"stopped by {signals.stop[0]}")
                    rc = proc.poll()
                    follower.poll()
                    if tracker.gen_start is None:
                        began = _generation_began(run_dir)
                        if began is not None:
                            tracker.began(began)
                    prog = tracker.update(follower.rows, follower.tokens, final=rc is not None,
                                          stage=waiting.phase(time.time() - tracker.start) if waiting else None)
                    if on_progress:
                        on_progress(prog)
                    if prog.due:
                        log.info("%s", prog.line())
                    if status:
                        status.update(prog, phase=prog.phase)
                    if rc is not None:
                        return rc
                    _sleep_unless_exits(proc, poll_s)
            except KeyboardInterrupt:  # Ctrl-C reaches only the launcher: torchrun runs in a session of its own
                raise _stop(proc, plan, "interrupted (Ctrl-C)") from None
    finally:
        if own is not None:
            own.__exit__()


def _no_space(path: Path) -> bool:
    """Is the disk holding `path` (as good as) full?"""
    try:
        return shutil.disk_usage(path.parent).free < (1 << 20)
    except OSError:
        return False



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
        out = Path(plan.out_path)
        if _no_space(out):
            log.error("torchrun exited with code %d and the disk of the output is full", rc)
            return disk_full_error(out)
        if rc < 0:
            name = signal.Signals(-rc).name
            log.error("torchrun was ended by %s", name)
            return LlamakitError(f"torchrun (which runs the workers) was ended by {name} from outside (kill, or the "
                                 "system's out-of-memory killer); its workers ended with it and the rows written so "
                                 "far are kept", "re-run the same command to resume", plan.out_path)
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


def status_name(nodes: Nodes) -> str:
    """status.json on one machine; status.node<R>.json for one node of several (llamakit.run.status sums them)."""
    return "status.json" if not nodes.multi else f"status.{nodes.lock_name.split('.', 1)[1]}.json"


def execute(setup: Setup, on_progress: ProgressFn | None = None, command: str | None = None) -> Summary:
    """Write the run folder, spawn the ranks, then check and reorder the output; raises the first rank's error.
    `command` is how the user started it (the status file shows it as the resume command)."""
    plan = setup.plan
    handler = _log_to(Path(plan.log_path))
    t0 = time.monotonic()
    status: StatusFile | None = None
    try:
        nodes = Nodes.from_dict(plan.nodes)
        with Signals(plan) as signals, RunLock(Path(plan.run_dir), Path(plan.out_path), nodes.lock_name):
            skipped = any(t.skipped for t in setup.todo)
            start = plan.pending > 0 or (nodes.parts and skipped)  # with part files the replicas write skipped rows
            if plan.pending or skipped:  # a fresh port before the plan is logged: the log names the one the run uses
                plan.master_port = free_port()
                setup.argv = torchrun_argv(plan, setup.plan_file)
            status = StatusFile(Path(plan.run_dir), status_name(nodes),
                                command=command or f"llamakit run {shlex.quote(str(setup.loaded.path))}",
                                cwd=os.getcwd(), recipe=str(setup.loaded.path), out_path=plan.out_path,
                                log_path=plan.log_path, total=plan.total, done_before=plan.already_done,
                                todo=plan.pending, done=0, gpus=plan.gpus, phase="starting")
            status.update(force=True)
            log.info("llamakit run %s%s", setup.loaded.path, f" ({nodes.label()})" if nodes.parts else "")
            for line in describe(plan, setup.argv):
                log.info("plan: %s", line)
            if plan.pending or skipped:  # this run writes rows: record its settings before the first row
                plan.save(setup.plan_file)
                if setup.plan_file.name != "plan.json":  # over several nodes: this node's own, and the record
                    plan.save(Path(plan.run_dir) / "plan.json")
            n_skipped = prepare_output(setup)
            tracker = Tracker(plan.pending)
            if start:
                write_work(setup.todo, Path(plan.work_path), with_skipped=nodes.parts)
                (Path(plan.run_dir) / "merged.json").unlink(missing_ok=True)
                procs = plural(plan.nproc, "process")
                log.info("starting %s: %s", f"{plan.local_nproc} of {procs}" if nodes.multi else procs,
                         " ".join(setup.argv))
                rc = spawn(setup, on_progress, tracker=tracker, status=status, signals=signals)
                if rc != 0:
                    raise _worker_error(rc, plan)
            prog = tracker.last
            status.update(force=True, phase="finishing")
            if merges_here(plan, nodes, start):
                try:
                    summary = finish(setup, n_skipped, t0, prog.gen_seconds if prog else 0.0)
                except OSError as e:
                    if e.errno != errno.ENOSPC:
                        raise
                    raise LlamakitError(f"no space left on device while putting {plan.out_path} in input order "
                                        f"(that needs a second copy, {human_bytes(Path(plan.out_path).stat().st_size)})",
                                        "free that much space on its disk and re-run: every row is there, the re-run "
                                        "only puts them in order", plan.out_path) from None
                clean_run_dir(Path(plan.run_dir))
            else:
                summary = finish_elsewhere(setup, nodes, t0)
            status.update(prog, force=True, phase="complete")
        return summary
    except OSError as e:  # the launcher's own writes (run folder, skipped rows) on a full disk
        if e.errno != errno.ENOSPC:
            raise
        err = disk_full_error(Path(plan.out_path))
        log.error("error: %s", err.one_line())
        raise err from None
    except LlamakitError as e:
        log.error("error: %s", e.one_line())
        if status is not None:
            status.update(force=True, phase="stopped", error=e.one_line())
        raise
    finally:
        log.removeHandler(handler)
        handler.close()
