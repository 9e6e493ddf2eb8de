"""Runs over several nodes: torchrun's launch words (--nnodes, --node-rank, --master-addr/--master-port or the c10d
rendezvous), the checks every node makes the same way before anything starts, and the independent-share mode."""

from __future__ import annotations

import os
import re
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from llamakit.distributed import can_bind
from llamakit.errors import LlamakitError


@dataclass(frozen=True)
class Nodes:
    """Where this `llamakit run` stands among the nodes of one run; the default is the single-node run."""

    nnodes: int = 1
    node_rank: int | None = None  # static rendezvous (--master-addr); None with c10d (the rendezvous assigns it)
    master_addr: str | None = None
    master_port: int | None = None
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous
    rdzv_id: str | None = None
    mp_across_nodes: bool = False  # the user accepts model-parallel groups that span nodes
    share: tuple[int, int] | None = None  # (K, N): this node generates prompts K, K+N, ... on its own

    @property
    def multi(self) -> bool:
        return self.nnodes > 1

    @property
    def is_merger(self) -> bool | None:
        """Whether this node merges the parts at the end (node 0); None when the rendezvous decides (c10d)."""
        if not self.multi:
            return self.share is None
        return None if self.node_rank is None else self.node_rank == 0

    @property
    def parts(self) -> bool:
        """Rows go to one part file per replica (merged at the end) instead of straight into out_path."""
        return self.multi or self.share is not None

    @property
    def lock_name(self) -> str:
        """The run folder's lock file for this launcher. flock between hosts is what NFS may not honour, so over
        several nodes each node takes its own (two launchers for one node rank still exclude each other; with c10d
        the rendezvous admits exactly nnodes, so each launcher's lock is its own)."""
        if not self.multi:
            return "lock"
        if self.node_rank is not None:
            return f"lock.node{self.node_rank}"
        return f"lock.{socket.gethostname()}-{os.getpid()}"  # c10d: the rendezvous itself admits nnodes launchers

    def log_path(self, log: Path) -> Path:
        """Each node appends to its own log (appends of two hosts to one NFS file can interleave): node 0 keeps the
        recipe's log, node R writes NAME.nodeR.log next to it (NAME.HOST-PID.log with c10d), a share NAME.sKofN.log."""
        if self.share:
            return log.with_name(f"{log.stem}.s{self.share[0]:02d}of{self.share[1]:02d}{log.suffix}")
        if not self.multi or self.node_rank == 0:
            return log
        tag = f"node{self.node_rank}" if self.node_rank is not None else f"{socket.gethostname()}-{os.getpid()}"
        return log.with_name(f"{log.stem}.{tag}{log.suffix}")

    def to_dict(self) -> dict[str, Any]:
        """For plan.json: {} for a plain single-node run, so its plan is unchanged."""
        return asdict(self) if self.parts else {}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> "Nodes":
        if not d:
            return cls()
        return cls(**{**d, "share": tuple(d["share"]) if d.get("share") else None})

    def label(self) -> str:
        """For plan lines and messages: 'node 1 of 2', 'share 3 of 8', or '' for a single-node run."""
        if self.share:
            return f"share {self.share[0]} of {self.share[1]}"
        if not self.multi:
            return ""
        if self.node_rank is None:
            return f"one of {self.nnodes} nodes"
        return f"node {self.node_rank} of {self.nnodes}"


def parse_share(text: str) -> tuple[int, int]:
    """'3/8' -> (3, 8): share K of N (0-based K, as SLURM_ARRAY_TASK_ID counts)."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m or int(m.group(2)) < 1 or int(m.group(1)) >= int(m.group(2)):
        raise LlamakitError(f"--share {text!r} is not K/N with 0 <= K < N",
                            "give e.g. --share 0/4 (in a SLURM array: --share $SLURM_ARRAY_TASK_ID/4)", "--share")
    return int(m.group(1)), int(m.group(2))


def make_nodes(nnodes: int | None = None, node_rank: int | None = None, master_addr: str | None = None,
               master_port: int | None = None, rdzv_endpoint: str | None = None, rdzv_id: str | None = None,
               mp_across_nodes: bool = False, share: str | None = None) -> Nodes:
    """Check the launch flags together (each error names the flag and the fix) and return them as Nodes."""
    n = 1 if nnodes is None else nnodes
    if n < 1:
        raise LlamakitError(f"--nnodes {n} is out of range", "give the number of nodes, 1 or more", "--nnodes")
    sh = parse_share(share) if share is not None else None
    if sh and (n > 1 or master_addr or rdzv_endpoint):
        raise LlamakitError("--share runs one node on its own; it does not combine with --nnodes, --master-addr "
                            "or --rdzv-endpoint", "use either --share K/N (independent shares, merged by `llamakit "
                            "merge`) or --nnodes N with a rendezvous", "--share")
    if master_addr and rdzv_endpoint:
        raise LlamakitError("--master-addr and --rdzv-endpoint are two ways to name the rendezvous; give one",
                            "static (every node knows its --node-rank): --master-addr HOST --master-port P; or "
                            "c10d (ranks assigned): --rdzv-endpoint HOST:PORT --rdzv-id ID", "--rdzv-endpoint")
    if n == 1:
        if node_rank not in (None, 0) or master_addr or rdzv_endpoint:
            raise LlamakitError("--node-rank, --master-addr and --rdzv-endpoint are for runs over several nodes",
                                "add --nnodes N (N > 1), or leave them out for a run on this machine", "--nnodes")
        return Nodes(share=sh)
    if rdzv_endpoint:
        host, port = split_endpoint(rdzv_endpoint)
        if node_rank is not None:
            raise LlamakitError("--node-rank is assigned by the c10d rendezvous", "leave --node-rank out with "
                                "--rdzv-endpoint (or use --master-addr with --node-rank)", "--node-rank")
        if not rdzv_id:
            raise LlamakitError("--rdzv-endpoint needs --rdzv-id: the same id on every node of this run",
                                "add --rdzv-id ID (in SLURM: --rdzv-id $SLURM_JOB_ID)", "--rdzv-id")
        return Nodes(n, None, None, None, f"{host}:{port}", rdzv_id, mp_across_nodes)
    if not master_addr:
        raise LlamakitError(f"--nnodes {n} needs the rendezvous host every node connects to",
                            "add --master-addr HOST --master-port PORT --node-rank R (R = 0 on HOST), or "
                            "--rdzv-endpoint HOST:PORT --rdzv-id ID", "--nnodes")
    if node_rank is None or not 0 <= node_rank < n:
        raise LlamakitError(f"--node-rank {node_rank} with --nnodes {n}" if node_rank is not None else
                            "--master-addr needs --node-rank", f"give each node its own --node-rank 0..{n - 1} "
                            "(0 on the --master-addr host)", "--node-rank")
    port = 29500 if master_port is None else master_port
    if not 0 < port < 65536:
        raise LlamakitError(f"--master-port {port} is out of range", "give a port 1024..65535", "--master-port")
    return Nodes(n, node_rank, master_addr, port, None, None, mp_across_nodes)


def split_endpoint(text: str) -> tuple[str, int]:
    """'HOST:PORT' (or '[v6]:PORT') -> (host, port)."""
    m = re.fullmatch(r"\[?([^\[\]]+?)\]?:(\d+)", text.strip())
    if not m or not 0 < int(m.group(2)) < 65536:
        raise LlamakitError(f"--rdzv-endpoint {text!r} is not HOST:PORT", "give e.g. --rdzv-endpoint node01:29400",
                            "--rdzv-endpoint")
    return m.group(1), int(m.group(2))


def check_layout(mp: int, nproc_per_node: int, nodes: Nodes, where: str = "--nproc") -> int:
    """MP x DP over nnodes x nproc_per_node: the same answer on every node. Returns DP (replicas in the run).
    A model-parallel group that spans nodes runs every layer's all-reduce over the network: refused unless asked."""
    world = nproc_per_node * nodes.nnodes
    if world % mp:
        raise LlamakitError(f"{nodes.nnodes} nodes x {nproc_per_node} processes = {world} is not a multiple of the "
                            f"checkpoint's MP={mp}", f"use a multiple of {mp} processes per node", where)
    if nproc_per_node % mp and not nodes.mp_across_nodes:
        raise LlamakitError(f"the checkpoint's MP={mp} does not fit in {nproc_per_node} process(es) per node, so a "
                            "model-parallel group would span nodes: every layer of every token would then wait for "
                            "the network (slow over Ethernet)", f"use {mp} processes (GPUs) per node (or reshard to MP="
                            f"{nproc_per_node}); if you mean it (fast interconnect), add --mp-across-nodes", where)
    return world // mp


def local_processes(device: str, nproc: str | int, mp: int, gpus: list, cuda_ok: bool, nodes: Nodes) -> int:
    """Processes this node starts (torchrun's --nproc-per-node): the recipe's nproc (per node here), else one per
    usable GPU in whole model-parallel groups, else (CPU) one model-parallel group, or its share of one."""
    if isinstance(nproc, int):
        return nproc
    on_gpu = device == "cuda" or (device == "auto" and cuda_ok and gpus)
    if on_gpu and gpus:
        return len(gpus) if nodes.mp_across_nodes else max(mp, len(gpus) // mp * mp)
    if nodes.mp_across_nodes and mp % nodes.nnodes == 0:
        return mp // nodes.nnodes
    return mp


def torchrun_node_args(nodes: Nodes, nproc_per_node: int, local_port: int) -> list[str]:
    """torchrun's own flags for this node: the single-node ones as before, or the rendezvous of the run."""
    head = ["--nproc_per_node", str(nproc_per_node)]
    if not nodes.multi:
        return ["--nnodes", "1", *head, "--master_addr", "127.0.0.1", "--master_port", str(local_port)]
    if nodes.rdzv_endpoint:
        return ["--nnodes", str(nodes.nnodes), *head, "--rdzv-backend", "c10d", "--rdzv-endpoint",
                nodes.rdzv_endpoint, "--rdzv-id", str(nodes.rdzv_id)]
    return ["--nnodes", str(nodes.nnodes), *head, "--node-rank", str(nodes.node_rank), "--master-addr",
            str(nodes.master_addr), "--master-port", str(nodes.master_port)]


def in_share(position: int, share: tuple[int, int] | None) -> bool:
    """Whether the prompt at this position of the prompt file belongs to this node's share (array mode)."""
    return share is None or position % share[1] == share[0]


def check_rendezvous_host(nodes: Nodes) -> None:
    """Before anything starts: the rendezvous host resolves here; node 0 (static) is that host and its port is free.
    Catches a login node or another machine given as --master-addr, and a port another run holds."""
    if not nodes.multi:
        return
    flag = "--master-addr" if nodes.master_addr else "--rdzv-endpoint"
    host, port = (nodes.master_addr, nodes.master_port) if nodes.master_addr else \
        split_endpoint(str(nodes.rdzv_endpoint))
    try:
        ip = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][4][0]
    except OSError as e:
        raise LlamakitError(f"the rendezvous host {host!r} does not resolve on this node ({e.strerror or e})",
                            "give node 0's name as the nodes know it, or its IP address (`llamakit doctor "
                            "--master-addr HOST` on each node checks it)", flag) from None
    if nodes.node_rank != 0:
        return
    if not can_bind(ip, 0):
        raise LlamakitError(f"--node-rank 0 hosts the rendezvous, but --master-addr {host} ({ip}) is not this "
                            "machine", "start node 0 on that host, or give this machine's own address (in SLURM the "
                            "first node of $SLURM_JOB_NODELIST, never the login node)", flag)
    if not can_bind(ip, int(port or 0)):
        raise LlamakitError(f"port {port} on {host} is in use (another run, or another job on this node)",
                            f"use another --master-port on every node (the sbatch script derives one from the job "
                            f"id); `ss -ltnp | grep :{port}` shows who holds it", "--master-port")
