"""Two network namespaces joined by a veth pair, each with its own address: two "nodes" on one machine that reach
each other only over that link (made with `ip netns`; the caller skips when that is not permitted)."""

from __future__ import annotations

import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

IFNAME = "lknet0"  # the same interface name inside both namespaces, as on a cluster's nodes


@dataclass(frozen=True)
class TwoNodes:
    names: tuple[str, str]
    addrs: tuple[str, str]
    ifname: str = IFNAME

    def prefix(self, i: int) -> list[str]:
        """argv prefix that runs a command inside node i's namespace (the pid stays the command's own)."""
        return ["ip", "netns", "exec", self.names[i]]


class NetnsUnavailable(RuntimeError):
    """ip netns is missing or not permitted here (not root, or no CAP_SYS_ADMIN in a container)."""


def _ip(*args: str) -> None:
    res = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(args)}: {res.stderr.strip()}")


@contextmanager
def two_namespaces() -> Iterator[TwoNodes]:
    """Create the namespaces, yield them, and always delete them (which also removes the veth pair)."""
    if shutil.which("ip") is None or os.geteuid() != 0:
        raise NetnsUnavailable("needs root and iproute2's `ip`")
    tag = f"lk{os.getpid() % 100000}"
    names = (f"{tag}n0", f"{tag}n1")
    octet = 100 + os.getpid() % 150
    addrs = (f"10.231.{octet}.1", f"10.231.{octet}.2")
    made: list[str] = []
    try:
        for n in names:
            _ip("netns", "add", n)
            made.append(n)
        _ip("link", "add", f"{tag}a", "type", "veth", "peer", "name", f"{tag}b")
        for n, end, addr in zip(names, (f"{tag}a", f"{tag}b"), addrs):
            _ip("link", "set", end, "netns", n)
            _ip("-n", n, "link", "set", end, "name", IFNAME)
            _ip("-n", n, "addr", "add", f"{addr}/24", "dev", IFNAME)
            _ip("-n", n, "link", "set", IFNAME, "up")
            _ip("-n", n, "link", "set", "lo", "up")
        yield TwoNodes(names, addrs)
    finally:
        subprocess.run(["ip", "link", "del", f"{tag}a"], capture_output=True, timeout=30)  # if never moved
        for n in made:
            subprocess.run(["ip", "netns", "del", n], capture_output=True, timeout=30)
