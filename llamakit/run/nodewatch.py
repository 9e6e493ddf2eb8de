"""Inside the workers of a run over several nodes: every rank checks that all nodes planned the same run, a
heartbeat notices a lost node within a second or two (so the others stop with a clear message instead of waiting),
and the end is one barrier, after which rank 0 merges the part files into out_path."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

from llamakit.errors import LlamakitError

log = logging.getLogger("llamakit.worker")

# Words of gloo / NCCL / the TCP store when the process at the other end of a connection is gone.
LOST_PEER = ("connection closed by peer", "connection reset by peer", "broken pipe", "connection refused",
             "remote process exited", "timed out", "timeout", "socket closed", "read error", "write error",
             "end of file", "no route to host")


def lost_node_error(exc: BaseException | None = None) -> LlamakitError:
    """The one line a surviving node shows when another node of the run went away (gloo's or NCCL's own words,
    with their source paths, go to the log)."""
    if exc is not None:
        log.error("connection to another node lost: %s", str(exc).strip()[:2000])
    return LlamakitError("lost the connection to another node of this run: it stopped (killed, crashed, or its "
                         "job ended) or the network between the nodes failed",
                         "see that node's output and log; the rows written so far are kept: start the same "
                         "`llamakit run` on every node again (or re-submit the job) to resume")


def connect_error(exc: BaseException, plan: Any) -> LlamakitError:
    """The process group of all nodes could not form: the nodes do not reach each other."""
    log.error("joining the other nodes failed: %s", str(exc).strip()[:2000])
    host = plan.nodes.get("master_addr") or plan.nodes.get("rdzv_endpoint") or "HOST"
    return LlamakitError("this node's workers could not connect to the other nodes: usually the wrong network "
                         "interface (NCCL and gloo pick one themselves), a firewall between the nodes, or a node "
                         "that did not start", f"run `llamakit doctor --master-addr {host}` on each node; set "
                         "NCCL_SOCKET_IFNAME and GLOO_SOCKET_IFNAME to the interface the nodes share; then start "
                         "every node again")


def is_lost_peer(exc: BaseException) -> bool:
    text = str(exc).lower()
    return any(w in text for w in LOST_PEER)


def plan_digest(plan: Any) -> dict[str, Any]:
    """What every node must agree on before generating: parallelism, text settings, files, and the work list."""
    work = hashlib.sha256(Path(plan.work_path).read_bytes()).hexdigest()[:16]
    return {"host": socket.gethostname(), "mp": plan.mp, "dp": plan.dp, "engine": plan.engine,
            "max_gen_len": plan.max_gen_len, "fingerprints": plan.fingerprints, "total": plan.total,
            "pending": plan.pending, "work": work, "out_path": plan.out_path}


def differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return [f"{k} {a[k]!r} vs {b.get(k)!r}" for k in a if k != "host" and a[k] != b.get(k)]


class NodeWatch:
    """A gloo group of all ranks for the plan check, the heartbeat and the final barrier (the model's own
    collectives stay on the default group)."""

    def __init__(self, timeout_s: float = 600.0, interval_s: float = 0.5):
        import torch.distributed as dist

        self.dist = dist
        self.group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
        self.rank, self.world = dist.get_rank(), dist.get_world_size()
        self.interval = interval_s
        self.done = False
        self.woken = threading.Event()  # set by finish(): the next beat goes now, not after the interval
        self.thread: threading.Thread | None = None

    def check_same_plan(self, plan: Any) -> None:
        """Every node validated its plan alone; here they compare: a difference stops all before generating."""
        mine = plan_digest(plan)
        everyone: list[Any] = [None] * self.world
        self.dist.all_gather_object(everyone, mine, group=self.group)
        for r, other in enumerate(everyone):
            diff = differences(everyone[0], other)
            if diff:
                raise LlamakitError(f"the nodes planned different runs: rank {r} on {other['host']} has "
                                    f"{'; '.join(diff)} (rank 0 on {everyone[0]['host']})",
                                    "start every node with the same recipe and flags, the same llamakit, and the "
                                    "prompt file, checkpoint and output on a file system all nodes share; then "
                                    "start them again")

    def start(self, on_lost: Callable[[LlamakitError], None]) -> None:
        """Beat in a thread: an all-reduce of 'done' flags every interval. A lost peer breaks it at once."""
        import torch

        def beat() -> None:
            try:
                while True:
                    t = torch.tensor([1 if self.done else 0], dtype=torch.int64)
                    self.dist.all_reduce(t, group=self.group)
                    if int(t.item()) == self.world:
                        return
                    self.woken.wait(self.interval)  # each rank still beats once per loop: the all-reduces pair up
            except Exception as e:  # noqa: BLE001 - any failure here means a node is gone
                on_lost(lost_node_error(e))

        self.thread = threading.Thread(target=beat, name="llamakit-heartbeat", daemon=True)
        self.thread.start()

    def finish(self) -> None:
        """Wait until every rank of every node is done (their part files closed)."""
        self.done = True
        self.woken.set()
        if self.thread is not None:
            self.thread.join()

    def barrier(self) -> None:
        self.dist.barrier(group=self.group)


def merge_at_end(plan: Any) -> int:
    """Rank 0, after the last replica finished: the parts into out_path in input order; a marker names the
    launcher whose workers did it (that launcher prints the summary)."""
    from llamakit.run.parts import merge_parts
    from llamakit.run.prompts import read_prompts

    order = [p.id for p in read_prompts(Path(plan.prompt_path), plan.prompt_field, plan.id_field, plan.chat_format)]
    rows = merge_parts(plan.out_path, order, require_complete=True)
    marker = Path(plan.run_dir) / "merged.json"
    tmp = marker.with_name(f"merged.{plan.launcher}.tmp")
    tmp.write_text(json.dumps({"launcher": plan.launcher, "rows": rows}), encoding="utf-8")
    os.replace(tmp, marker)
    log.info("merged %d rows into %s in input order", rows, plan.out_path)
    return rows
