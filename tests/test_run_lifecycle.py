"""Long runs left alone, with real processes and real signals: kill -9 of the launcher or of torchrun leaves no
process behind and the re-run resumes exactly; a terminal hang-up does not stop a run; progress lines without a
terminal; `llamakit status` for a live, a stopped and a complete run; a disk that fills up mid-run."""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import psutil
import pytest

from llamakit.run.status import run_status

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N = 20


@pytest.fixture(scope="module")
def world(tiny_factory, tmp_path_factory):
    """20 prompts, decoded one at a time (max_batch_size 1) so that a run lasts long enough to be stopped."""
    root = tmp_path_factory.mktemp("life")
    (root / "prompts.jsonl").write_text("".join(json.dumps({"id": f"q{i:02d}", "prompt": f"Die Nachricht {i} lautet"})
                                                + "\n" for i in range(N)), encoding="utf-8")
    ckpt = tiny_factory("llama2", 1)

    def recipe(name: str, folder: Path | None = None, **keys: object) -> Path:
        body = {"ckpt_dir": str(ckpt), "prompt_path": str(root / "prompts.jsonl"),
                "out_path": str((folder or root) / f"{name}.jsonl"), "max_seq_len": 32, "max_gen_len": 8,
                "max_batch_size": 1, "temperature": 0, "device": "cpu", **keys}
        p = root / f"{name}.yaml"
        p.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items()), encoding="utf-8")
        return p

    return root, recipe


def env_for(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "LLAMAKIT_CACHE": str(root / "cache"), "COLUMNS": "200"}


def sigint_default() -> None:
    """Ctrl-C as in a terminal, also when the test runs in a background job (which inherits SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(root: Path, argv: list[str], out_file: Path) -> subprocess.Popen:
    """`llamakit run ...` in a session of its own (the test's signals stay out of it), output to a file."""
    with open(out_file, "wb") as f:
        return subprocess.Popen([sys.executable, "-m", "llamakit", "run", *argv], cwd=root, env=env_for(root),
                                stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=sigint_default)


def wait_rows(out: Path, proc: subprocess.Popen, rows: int = 3, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= rows:
            return
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.05)
    raise AssertionError(f"no {rows} rows in {out} after {timeout} s")


def tree(pid: int) -> list[psutil.Process]:
    top = psutil.Process(pid)
    return [top, *top.children(recursive=True)]


def assert_all_gone(procs: list[psutil.Process], within: float = 5.0) -> None:
    """No process of the run is left `within` seconds after the kill (zombies of the test's own child count as
    gone: only the test can reap them)."""
    _, alive = psutil.wait_procs(procs, timeout=within)
    left = []
    for p in alive:
        try:
            if p.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{p.pid} {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    assert not left, f"still running {within} s after the kill: {left}"


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def rerun(root: Path, r: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamakit", "run", str(r)], cwd=root, env=env_for(root),
                          capture_output=True, text=True, timeout=180)


def start_on_pty(root: Path, r: Path) -> tuple[subprocess.Popen, int]:
    """`llamakit run r` in a new session whose controlling terminal is a pty, as a login's would be; returns the
    process and the pty's other side (closing it hangs up the terminal: SIGHUP to the run)."""
    master, slave = os.openpty()

    def controlling_terminal() -> None:  # after setsid: the pty becomes the run's terminal
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    proc = subprocess.Popen([sys.executable, "-m", "llamakit", "run", str(r)], cwd=root, env=env_for(root),
                            stdin=slave, stdout=slave, stderr=slave, start_new_session=True,
                            preexec_fn=controlling_terminal)
    os.close(slave)
    return proc, master


@pytest.fixture(scope="module")
def hung_up(world):
    """A run whose terminal hangs up (a pty is closed under it, as a closing SSH session does): it must finish."""
    root, recipe = world
    r = recipe("hup")
    out = root / "hup.jsonl"
    proc, master = start_on_pty(root, r)
    stop = threading.Event()
    seen = bytearray()

    def drain() -> None:  # the terminal's other side: read what the run draws, until the hang-up
        while not stop.is_set():
            if select.select([master], [], [], 0.1)[0]:
                try:
                    seen.extend(os.read(master, 4096))
                except OSError:
                    return

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        wait_rows(out, proc, 2)
    finally:
        stop.set()
        reader.join()
        os.close(master)  # the hang-up: SIGHUP to the run, its terminal is gone
    rc = proc.wait(timeout=180)
    return root, out, rc, bytes(seen)


def test_a_run_whose_terminal_hangs_up_finishes_normally(hung_up):
    root, out, rc, seen = hung_up
    log = (root / "hup.log").read_text(encoding="utf-8")
    assert rc == 0, log[-3000:]
    assert "the terminal hung up (SIGHUP): the run goes on" in log
    assert "wrote 20 rows in input order" in log and "summary: 20 prompts: 20 generated now" in log
    assert [r["id"] for r in rows_of(out)] == [f"q{i:02d}" for i in range(N)]
    assert b"llamakit run: 20 prompts to generate" in seen  # it did draw on the terminal before the hang-up


def catches_sighup(pid: int) -> bool:
    """Whether the process has a handler for SIGHUP (/proc/PID/status, SigCgt: a bit per caught signal)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            mask = next(int(ln.split()[1], 16) for ln in f if ln.startswith("SigCgt:"))
    except (OSError, StopIteration):
        return False
    return bool(mask & (1 << (signal.SIGHUP - 1)))


def test_a_hang_up_while_the_run_is_still_being_planned_does_not_end_it(world, hung_up):
    """The SSH session closes in the first seconds of `llamakit run` (imports, planning): the run still finishes."""
    root, recipe = world
    r = recipe("early")
    out = root / "early.jsonl"
    proc, master = start_on_pty(root, r)
    deadline = time.monotonic() + 60
    while not catches_sighup(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.close(master)  # the hang-up as soon as the launcher can take it: long before the model is loaded
    rc = proc.wait(timeout=180)
    log = (root / "early.log").read_text(encoding="utf-8")
    assert rc == 0, log[-3000:]
    assert "the terminal hung up (SIGHUP) while the run was being planned: the run goes on" in log
    assert rows_of(out) == rows_of(hung_up[1])  # every row, the same texts as the run hung up while generating


def test_kill_9_of_the_launcher_ends_every_process_and_status_follows(world, hung_up):
    root, recipe = world
    r = recipe("k9")
    out = root / "k9.jsonl"
    proc = start(root, [str(r)], root / "k9.out")
    wait_rows(out, proc)
    live = run_status(out)
    assert live.state == "running" and live.pid == proc.pid and live.total == N, live
    names = [p["name"] for p in live.processes]
    assert names[0] == "llamakit run" and "torchrun" in names and "worker" in names, live.processes
    procs = tree(proc.pid)
    assert len(procs) >= 3
    proc.send_signal(signal.SIGKILL)  # the launcher alone, as the OOM killer or `kill -9 PID` would
    proc.wait()
    assert_all_gone(procs)
    stopped = run_status(r)
    assert stopped.state == "stopped" and 3 <= stopped.done < N and stopped.total == N, stopped
    assert stopped.resume and "llamakit run" in stopped.resume and str(r) in stopped.resume
    assert "ended without a message" in (stopped.error or "")
    res = rerun(root, r)  # stdout to a pipe, not a terminal: plain progress lines, at each 10 % of the rows
    assert res.returncode == 0, res.stderr
    assert "were already in the output (resumed)" in res.stdout
    assert rows_of(out) == rows_of(hung_up[1])  # the same texts as the uninterrupted run
    lines = [ln for ln in res.stdout.splitlines() if ln.startswith("progress: ")]
    todo = N - stopped.done
    # the follower samples the output twice a second, so how many 10 % steps it sees depends on the machine's speed
    # (on an idle machine the paged engine writes all 16 rows within one poll); the rule itself, and the ETA shown
    # during a run, are pinned by the unit test below
    done_counts = [int(ln.split()[1].split("/")[0]) for ln in lines]
    assert len(lines) >= 1 and done_counts == sorted(set(done_counts)), res.stdout
    assert lines[-1].startswith(f"progress: {todo}/{todo} rows (100%)"), res.stdout
    assert all("tok/s last minute" in ln and "tok/s overall" in ln and ", ETA " in ln for ln in lines), lines
    log = (root / "k9.log").read_text()
    assert lines[-1] in log  # the same line in the log
    ports = re.findall(r"--master_port (\d+)", log)  # each run's log names one port: its plan's and torchrun's
    assert len(set(ports)) == log.count(" launcher  llamakit run ") == 2 and len(ports) == 4, ports
    res = subprocess.run([sys.executable, "-m", "llamakit", "status", str(out), "--json"], cwd=root,
                         env=env_for(root), capture_output=True, text=True, timeout=60)
    done = json.loads(res.stdout)
    assert done["state"] == "complete" and done["done"] == N and done["tok_per_s"] > 0, done


def test_kill_9_of_torchrun_ends_the_workers_and_the_run_says_so(world, hung_up):
    root, recipe = world
    r = recipe("t9")
    out = root / "t9.jsonl"
    proc = start(root, [str(r)], root / "t9.out")
    wait_rows(out, proc)
    torchrun = [p for p in tree(proc.pid) if "torch.distributed.run" in " ".join(p.cmdline())]
    assert len(torchrun) == 1
    workers = torchrun[0].children(recursive=True)
    assert len(workers) == 1
    torchrun[0].send_signal(signal.SIGKILL)
    assert_all_gone(workers)
    assert proc.wait(timeout=30) == 2
    msg = (root / "t9.out").read_text()
    assert "torchrun (which runs the workers) was ended by SIGKILL" in msg and "re-run the same command" in msg
    res = rerun(root, r)
    assert res.returncode == 0, res.stderr
    assert rows_of(out) == rows_of(hung_up[1])


def test_ctrl_c_twice_stops_at_once_with_one_line(world):
    root, recipe = world
    r = recipe("cc2")
    out = root / "cc2.jsonl"
    proc = start(root, [str(r)], root / "cc2.out")
    wait_rows(out, proc)
    procs = tree(proc.pid)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) == 2
    msg = (root / "cc2.out").read_text()
    assert "interrupted (Ctrl-C), and again: stopped at once; the rows written so far are kept" in msg, msg
    assert "Traceback" not in msg
    assert_all_gone(procs)


def _in_small_tmpfs(size: str, mount: Path, cmd: list[str], keep: Path) -> list[str] | None:
    """cmd inside a fresh mount namespace with a tmpfs of `size` on `mount` (as root, or in a user namespace);
    what it leaves there is copied to `keep`. None when this machine allows neither."""
    if not shutil.which("unshare"):
        return None
    for flags in (["-m"], ["-Urm"]):
        if subprocess.run(["unshare", *flags, "sh", "-c", f"mount -t tmpfs -o size=64k tmpfs {mount}"],
                          capture_output=True).returncode == 0:
            script = (f'mount -t tmpfs -o size={size} tmpfs "$0" || exit 9; "$@"; rc=$?; '
                      f'cp -r "$0"/. "{keep}"/; df -k "$0" | tail -1 >&2; exit $rc')
            return ["unshare", *flags, "sh", "-c", script, str(mount), *cmd]
    return None


def test_disk_full_mid_run_says_so_and_keeps_the_rows(world, tmp_path):
    root, recipe = world
    disk = tmp_path / "disk"
    disk.mkdir()
    prompts = tmp_path / "big.jsonl"  # 4 kB of extra fields per row: a few rows fill a page of the tmpfs
    prompts.write_text("".join(json.dumps({"id": i, "prompt": f"Nachricht {i}", "body": "x" * 4000}) + "\n"
                               for i in range(20)), encoding="utf-8")
    r = recipe("full", folder=disk, prompt_path=str(prompts))
    keep = tmp_path / "kept"
    keep.mkdir()
    cmd = _in_small_tmpfs("128k", disk, [sys.executable, "-m", "llamakit", "run", str(r)], keep)
    if cmd is None:
        pytest.skip("cannot mount a small tmpfs here (needs root or user namespaces)")
    res = subprocess.run(cmd, cwd=root, env=env_for(root), capture_output=True, text=True, timeout=180)
    assert res.returncode == 2, res.stdout + res.stderr
    assert "note: the output may need up to" in res.stdout and "is free on the disk of" in res.stdout
    err = res.stderr.strip().splitlines()[0]  # the second line is the test's own `df`
    assert "no space left on device writing" in err, res.stderr
    assert "the rows written so far are kept" in err and "re-run to resume" in err and "without a message" not in err
    kept = [json.loads(line) for line in (keep / "full.jsonl").read_bytes().splitlines(keepends=True)
            if line.endswith(b"\n")]
    assert 0 < len(kept) < 20 and len({r["id"] for r in kept}) == len(kept)


def test_a_plain_progress_line_is_due_at_each_tenth_of_the_rows_and_every_30_s():
    from llamakit.run.progress import Tracker

    tr = Tracker(total=20, now=0.0)
    tr.began(0.0)
    due_at = [rows for rows in range(1, 21) if tr.update(rows, 8 * rows, now=rows * 0.1).due]
    assert due_at == [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]  # each 10 % of 20 rows, and no line in between
    slow = Tracker(total=1000, now=0.0)
    slow.began(0.0)
    assert [t for t in (10.0, 29.0, 31.0, 45.0, 62.0) if slow.update(1, 8, now=t).due] == [31.0, 62.0]
    last = slow.update(1, 8, now=62.5)
    assert "ETA" in last.line() and "tok/s last minute" in last.line()


def test_the_launcher_notices_that_torchrun_ended_at_once_not_a_poll_later():
    from llamakit.run.supervise import _sleep_unless_exits

    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(0.2)"])
    t = time.monotonic()
    _sleep_unless_exits(proc, 60.0)
    assert time.monotonic() - t < 20 and proc.wait(timeout=5) == 0  # the process's end, not the 60 s
    t = time.monotonic()
    _sleep_unless_exits(proc, 60.0)  # already ended and reaped: no wait either
    assert time.monotonic() - t < 5
