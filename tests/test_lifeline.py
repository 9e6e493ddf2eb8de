"""The parent-death signal, with real processes: a guarded program, a late child, and doctor's probe ranks all
end within seconds of a `kill -9` of the process that started them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="parent-death signal is Linux only")


def _starter(body: str, tmp_path: Path) -> tuple[subprocess.Popen, list[psutil.Process]]:
    """A python process running `body` (which starts children and writes their pids), and those children."""
    pids = tmp_path / "pids"
    code = textwrap.dedent(body).replace("PIDS", repr(str(pids)))
    starter = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(REPO)},
                               start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = pids.read_text() if pids.exists() else ""
        if text.endswith("\n"):
            children = [psutil.Process(int(p)) for p in text.split()]
            return starter, children
        assert starter.poll() is None, "the starter ended early"
        time.sleep(0.05)
    raise AssertionError("the starter did not start its children")


def _gone_within(procs: list[psutil.Process], seconds: float) -> None:
    _, alive = psutil.wait_procs(procs, timeout=seconds)
    assert not alive, [" ".join(p.cmdline()) for p in alive]


def test_a_guarded_program_ends_with_its_starter(tmp_path):
    starter, children = _starter("""
        import subprocess, pathlib
        from llamakit.lifeline import child_env, guarded
        p = subprocess.Popen(guarded(["sleep", "300"]), env=child_env())
        pathlib.Path(PIDS).write_text(f"{p.pid}\\n")
        p.wait()
    """, tmp_path)
    time.sleep(0.5)  # the lifeline has exec'd: the pid is `sleep` now
    assert children[0].cmdline()[0] == "sleep"
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    _gone_within(children, 5)


def test_a_child_whose_starter_already_ended_ends_at_once(tmp_path):
    # the race the check closes: the starter ends between the child's fork and its prctl
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLAMAKIT_PARENT_PID": str(os.getpid() + 10_000_000)}
    res = subprocess.run([sys.executable, "-c", "from llamakit.lifeline import die_with_parent; die_with_parent(); "
                          "print('still here')"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == -signal.SIGKILL and "still here" not in res.stdout


def test_doctors_allreduce_probe_and_its_ranks_end_with_doctor(tmp_path):
    starter, probe = _starter("""
        import pathlib, time, psutil
        from llamakit.doctor.active import start_probe
        from llamakit.doctor.facts import find_free_port
        p = start_probe(["allreduce", "--backend", "gloo", "--world", "2", "--port", str(find_free_port()), "--bytes", "4096",
                         "--iters", "100000000"])
        while len(psutil.Process(p.pid).children()) < 2:
            time.sleep(0.05)
        pathlib.Path(PIDS).write_text(" ".join(str(q.pid) for q in [psutil.Process(p.pid), *psutil.Process(p.pid).children()]) + "\\n")
        p.wait()
    """, tmp_path)
    assert len(probe) == 3  # the probe and its two gloo ranks
    starter.send_signal(signal.SIGKILL)
    starter.wait()
    _gone_within(probe, 5)
