"""What `llamakit run` does when its terminal goes away (a closed SSH session, a dead pipe): it detaches and goes on.

Kept free of heavy imports: `hang_up_detaches` is the first thing `llamakit run` does, before the seconds of importing
torch and planning, so a hang-up in those seconds no longer ends the launcher; `supervise.Signals` takes over once the
run's log is open and reports a hang-up that came before it."""

from __future__ import annotations

import os
import signal
import stat
import threading

_early: list[int] = []  # a hang-up before supervise.Signals took over (its signal number)


def detach_terminal() -> None:
    """Point stdout and stderr at /dev/null unless they are files: after a hang-up, writing to the closed terminal
    (or to a pipe whose reader died with it) fails; a run that goes on must not trip over its own progress bar."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.dup2(devnull, fd)
            except OSError:
                pass
    finally:
        os.close(devnull)


def _hang_up_early(signum: int, frame: object) -> None:
    if not _early:
        _early.append(signum)
        detach_terminal()


def hang_up_detaches() -> None:
    """From now on a hang-up (SIGHUP) detaches the terminal instead of ending the process (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGHUP, _hang_up_early)


def hung_up_early() -> bool:
    """Whether a hang-up came while hang_up_detaches' handler was the one in place."""
    return bool(_early)
