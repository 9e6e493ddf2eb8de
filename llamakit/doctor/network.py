"""doctor's network facts and rules for runs over several nodes: the interface NCCL and gloo would pick, and
whether the rendezvous host (--master-addr) resolves and its port answers. Facts are gathered once; rules are pure."""

from __future__ import annotations

import errno
import ipaddress
import os
import shutil
import socket
from dataclasses import dataclass, field
from typing import Any

from llamakit.data import load_table
from llamakit.distributed import can_bind
from llamakit.doctor.rules import FAIL, OK, SKIP, WARN, CheckResult


@dataclass
class NetFacts:
    """The host's interfaces and, with --master-addr, what this host sees of the rendezvous endpoint."""

    interfaces: dict[str, list[str]] = field(default_factory=dict)  # up interfaces -> their IPv4/IPv6 addresses
    hostname: str = ""
    hostname_addr: str | None = None  # what this host's name resolves to (gloo's default)
    nccl_ifname: str | None = None  # NCCL_SOCKET_IFNAME, GLOO_SOCKET_IFNAME as set in the environment
    gloo_ifname: str | None = None
    master_addr: str | None = None
    master_port: int = 29500
    master_ip: str | None = None  # None: did not resolve
    resolve_error: str | None = None
    route_addr: str | None = None  # the local address the kernel uses to reach master_ip
    master_is_local: bool = False
    connect: str | None = None  # "open" | "refused" | "timeout" | "error: ..."
    local_port_busy: bool | None = None  # master is this host: is the port taken here already?
    slurm_job: str | None = None  # SLURM_JOB_ID (None outside a job: on a login node, or no SLURM)
    slurm_present: bool = False


def gather_network(master_addr: str | None = None, master_port: int | None = None,
                   env: dict[str, str] | None = None, timeout: float = 2.0) -> NetFacts:
    """Everything the network rules look at; never raises (what it cannot learn stays None)."""
    env = dict(os.environ if env is None else env)
    nf = NetFacts(interfaces=_interfaces(), hostname=socket.gethostname(), nccl_ifname=env.get("NCCL_SOCKET_IFNAME"),
                  gloo_ifname=env.get("GLOO_SOCKET_IFNAME"), master_addr=master_addr,
                  master_port=29500 if master_port is None else master_port, slurm_job=env.get("SLURM_JOB_ID"),
                  slurm_present=shutil.which("sbatch") is not None)
    nf.hostname_addr = _resolve(nf.hostname)[0]
    if not master_addr:
        return nf
    nf.master_ip, nf.resolve_error = _resolve(master_addr)
    if nf.master_ip is None:
        return nf
    local = {a for addrs in nf.interfaces.values() for a in addrs}
    nf.master_is_local = nf.master_ip in local or ipaddress.ip_address(nf.master_ip).is_loopback
    nf.route_addr = _route_addr(nf.master_ip, nf.master_port)
    nf.connect = _connect(nf.master_ip, nf.master_port, timeout)
    if nf.master_is_local:
        nf.local_port_busy = nf.connect == "open" or not can_bind(nf.master_ip, nf.master_port)
    return nf


def _interfaces() -> dict[str, list[str]]:
    import psutil

    stats = psutil.net_if_stats()
    out: dict[str, list[str]] = {}
    for name, addrs in psutil.net_if_addrs().items():
        if name in stats and not stats[name].isup:
            continue
        ips = [a.address.split("%")[0] for a in addrs if a.family in (socket.AF_INET, socket.AF_INET6)]
        if ips:
            out[name] = ips
    return out


def _resolve(host: str) -> tuple[str | None, str | None]:
    try:
        infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as e:
        return None, str(e)
    v4 = [i[4][0] for i in infos if i[0] == socket.AF_INET]
    return (v4 or [infos[0][4][0]])[0], None


def _route_addr(ip: str, port: int) -> str | None:
    """The source address the kernel picks towards ip (a UDP connect sends nothing)."""
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    try:
        with socket.socket(fam, socket.SOCK_DGRAM) as s:
            s.connect((ip, port))
            return str(s.getsockname()[0])
    except OSError:
        return None


def _connect(ip: str, port: int, timeout: float) -> str:
    fam = socket.AF_INET6 if ":" in ip else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((ip, port))
            return "open"
        except socket.timeout:
            return "timeout"
        except ConnectionRefusedError:
            return "refused"
        except OSError as e:
            return "unreachable" if e.errno in (errno.EHOSTUNREACH, errno.ENETUNREACH) else f"error: {e}"


# ---------------------------------------------------------------- pure rules over NetFacts + checks/network.yaml


def table() -> dict[str, Any]:
    return load_table("network.yaml")


def _matches(name: str, prefixes: list[str]) -> bool:
    return any(name.startswith(p) for p in prefixes)


def nccl_pick(interfaces: dict[str, list[str]], ifname: str | None, rules: dict[str, Any]) -> str | None:
    """The interface NCCL's socket transport takes: NCCL_SOCKET_IFNAME (prefixes; ^ excludes, = exact) or its
    default order (an ib* interface, else the first not excluded, else lo)."""
    names = sorted(interfaces)
    if ifname:
        exclude = ifname.startswith("^")
        spec = ifname.lstrip("^")
        exact = spec.startswith("=")
        parts = [p for p in spec.lstrip("=").split(",") if p]
        hit = [n for n in names if (n in parts if exact else _matches(n, parts)) != exclude]
        return hit[0] if hit else None
    ib = [n for n in names if _matches(n, rules["prefer"])]
    if ib:
        return ib[0]
    rest = [n for n in names if not _matches(n, rules["exclude"])]
    return rest[0] if rest else ("lo" if "lo" in interfaces else None)


def interface_of(addr: str | None, interfaces: dict[str, list[str]]) -> str | None:
    return next((n for n, ips in interfaces.items() if addr in ips), None) if addr else None


def _is_loopback(addr: str | None) -> bool:
    try:
        return addr is not None and ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


def rule_network(nf: NetFacts | None) -> CheckResult:
    """Which interface NCCL and gloo would use, and whether that is the one that reaches the rendezvous host."""
    if nf is None:
        return CheckResult("network", SKIP, "network facts not gathered")
    t = table()
    nccl = nccl_pick(nf.interfaces, nf.nccl_ifname, t["nccl"])
    gloo = nf.gloo_ifname or interface_of(nf.hostname_addr, nf.interfaces) or (
        "lo" if _is_loopback(nf.hostname_addr) else None)
    route = interface_of(nf.route_addr, nf.interfaces)
    shown = ", ".join(f"{n} {ips[0]}" for n, ips in sorted(nf.interfaces.items()))
    gloo_why = f"GLOO_SOCKET_IFNAME={nf.gloo_ifname}" if nf.gloo_ifname else f"{nf.hostname} -> {nf.hostname_addr}"
    found = (f"NCCL would use {nccl or 'no interface'}"
             f"{' (NCCL_SOCKET_IFNAME=' + nf.nccl_ifname + ')' if nf.nccl_ifname else ''}; gloo would use "
             f"{gloo or '?'} ({gloo_why})"
             f"; interfaces up: {shown}")
    if nf.nccl_ifname and nccl is None:
        return CheckResult("network", FAIL, f"NCCL_SOCKET_IFNAME={nf.nccl_ifname} matches no interface that is up; "
                           f"interfaces up: {shown}", "set NCCL_SOCKET_IFNAME to one of them (or unset it)")
    if not nf.master_addr or nf.master_ip is None or nf.master_is_local:
        if not nf.gloo_ifname and _is_loopback(nf.hostname_addr):
            # fine on one machine; a run over several nodes would hang at its start
            status = WARN if nf.master_addr else OK
            return CheckResult("network", status, found + f"; this host's name resolves to the loopback "
                               f"({nf.hostname_addr}): right for one machine, but other nodes could not reach gloo",
                               "for runs over several nodes: export GLOO_SOCKET_IFNAME=IFACE (the interface the nodes "
                               "reach each other on; see the list above), and NCCL_SOCKET_IFNAME the same")
        return CheckResult("network", OK, found)
    found += f"; the route to {nf.master_addr} ({nf.master_ip}) leaves through {route or '?'}"
    wrong = [f"{lib} {pick}" for lib, pick in (("NCCL", nccl), ("gloo", gloo)) if route and pick and pick != route]
    if wrong:
        return CheckResult("network", WARN, found + f"; {' and '.join(wrong)} would not",
                           f"export NCCL_SOCKET_IFNAME={route} GLOO_SOCKET_IFNAME={route} on every node "
                           "(in the sbatch script, before srun)")
    return CheckResult("network", OK, found)


def rule_rendezvous(nf: NetFacts | None) -> CheckResult:
    """--master-addr resolves, is not a loopback or login-node address, and its port answers (or is free here)."""
    if nf is None or not nf.master_addr:
        return CheckResult("rendezvous", SKIP, "no --master-addr given (needed only for runs over several nodes)")
    hp = f"{nf.master_addr}:{nf.master_port}"
    if nf.master_ip is None:
        return CheckResult("rendezvous", FAIL, f"{nf.master_addr} does not resolve ({nf.resolve_error})",
                           "use the rendezvous node's name as the nodes know it (in SLURM: the first name of "
                           "`scontrol show hostnames $SLURM_JOB_NODELIST`) or its IP address")
    if _is_loopback(nf.master_ip):
        return CheckResult("rendezvous", WARN, f"{nf.master_addr} is this host's loopback ({nf.master_ip}): other "
                           "nodes cannot reach it", "give an address the other nodes reach (`hostname -f` or the IP "
                           "of the interface shown by the network check)")
    if nf.master_is_local:
        if nf.slurm_present and not nf.slurm_job:
            return CheckResult("rendezvous", WARN, f"{nf.master_addr} is this host, which runs no SLURM job: the "
                               "login node as rendezvous host (compute nodes often cannot connect to it, and the run "
                               "would stop when you log out)", "let the job pick it: the first node of "
                               "$SLURM_JOB_NODELIST (what `llamakit run RECIPE --sbatch` writes)")
        if nf.local_port_busy:
            return CheckResult("rendezvous", WARN, f"port {nf.master_port} on this host is in use (another run, or "
                               "another job on this node)", "use another --master-port (the sbatch script derives "
                               "it from the job id); `ss -ltnp | grep PORT` shows who holds it")
        return CheckResult("rendezvous", OK, f"{hp} is this host ({nf.master_ip}); the port is free for the "
                           "rendezvous")
    if nf.connect == "open":
        return CheckResult("rendezvous", OK, f"{hp} resolves to {nf.master_ip} and its port answers (a run is "
                           "waiting there)")
    if nf.connect == "refused":
        return CheckResult("rendezvous", OK, f"{hp} resolves to {nf.master_ip}; the host answers but nothing listens "
                           "on the port yet (normal before node 0 starts)", "")
    return CheckResult("rendezvous", FAIL, f"{hp} ({nf.master_ip}) does not answer ({nf.connect}): a firewall "
                       "drops it or the address is on a network this node does not reach",
                       "check with `nc -zv HOST PORT` from this node; use the address of the interface the nodes "
                       "share, or ask the admins which ports are open between compute nodes")
