"""Process-group set-up shared by run, bench and tests: torch.distributed + fairscale model parallel, quietly; and
the one free-port helper (torch is imported only inside the functions that need it)."""

from __future__ import annotations

import contextlib
import io
import socket


def port_is_free(port: int) -> bool:
    """True when nothing listens on localhost:port (we can bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def can_bind(ip: str, port: int) -> bool:
    """Whether this machine can listen on ip:port (the address is its own and the port is free), judged as torch's
    TCPStore binds it (SO_REUSEADDR: a port a closed run left in TIME_WAIT counts as free); port 0 asks only about
    the address."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((ip, port))
            return True
        except OSError:
            return False


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for torchrun's rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def init_model_parallel(mp: int) -> None:
    """fairscale's initialize_model_parallel, without its three "> initializing ..." lines on stdout
    (they would corrupt `--json` output and the progress display)."""
    from fairscale.nn.model_parallel.initialize import initialize_model_parallel, model_parallel_is_initialized

    if model_parallel_is_initialized():
        return
    with contextlib.redirect_stdout(io.StringIO()):
        initialize_model_parallel(mp)


def finish_and_exit(code: int, device: str) -> None:
    """End a worker process: its outputs are already closed and fsynced, so after flushing it leaves with os._exit,
    skipping the interpreter's teardown. On GPUs that teardown hangs: NCCL communicators used inside captured CUDA
    graphs hang in destroy_process_group / at interpreter exit (seen on 2x H200 with MP=2, 2026-11-24: all rows
    written, then no exit). On CPU the teardown (Python's last garbage collections over torch's objects) made every
    run wait ~0.3-0.5 s after its last row (2026-11-30, 2 cores); the gloo process group, which does not hang, is
    still destroyed first."""
    import logging
    import os
    import sys

    if device != "cuda":
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
