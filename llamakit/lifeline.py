"""Every process of a job ends with the process that started it: the Linux parent-death signal, set at start.

A starter marks its children's environment with its pid (`child_env`); each child calls `die_with_parent()` first
thing. For a program we do not own (torchrun), `guarded(argv)` runs it through `python -m llamakit.lifeline`, which
sets the signal and then execs the program (the signal survives exec; the pid stays the same). So `kill -9` of
`llamakit run` ends torchrun, and the end of torchrun (however it ends) ends every worker: no orphan keeps a GPU.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PARENT_ENV = "LLAMAKIT_PARENT_PID"  # the pid of the process that started this one under a lifeline
_PR_SET_PDEATHSIG = 1


def child_env(env: dict[str, str] | None = None) -> dict[str, str]:
    """`env` (default: this process's) plus this process's pid, for children that call die_with_parent()."""
    out = dict(os.environ if env is None else env)
    out[PARENT_ENV] = str(os.getpid())
    return out


def die_with_parent(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` to this process when its parent ends. If the parent already ended before this
    call (the window between fork and here), end now. False where the kernel has no such signal (not Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    expected = os.environ.get(PARENT_ENV, "")
    if expected.isdigit() and os.getppid() != int(expected):  # the parent ended before prctl: we were reparented
        os.kill(os.getpid(), sig)
        os._exit(128 + int(sig))
    return True


def guarded(argv: list[str], sig: int = signal.SIGKILL) -> list[str]:
    """`argv` started through the lifeline: it ends (with `sig`) when the process that starts it ends.
    Start it with child_env()."""
    return [sys.executable, "-m", "llamakit.lifeline", str(int(sig)), "--", *argv]


def main(argv: list[str]) -> None:
    """`python -m llamakit.lifeline SIG -- PROGRAM ARGS...`: set the parent-death signal, then exec PROGRAM."""
    if len(argv) < 3 or argv[1] != "--" or not argv[0].isdigit():
        sys.stderr.write("usage: python -m llamakit.lifeline SIGNAL -- PROGRAM [ARGS...]\n")
        sys.exit(2)
    die_with_parent(int(argv[0]))
    os.environ[PARENT_ENV] = str(os.getpid())  # exec keeps the pid: PROGRAM's children check against it
    os.execvp(argv[2], argv[2:])


if __name__ == "__main__":
    main(sys.argv[1:])
