"""What every doctor rule shares: the statuses, CheckResult (one row of the report) and the checks/ table helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["OK", "WARN", "FAIL", "SKIP", "GiB", "MiB", "WHEEL_URL", "HARMLESS_NCCL", "NCCL_FIXES", "tables", "vtuple",
           "gib", "fit_module", "CheckResult"]


OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
GiB = 1024**3
MiB = 1024**2
WHEEL_URL = "https://download.pytorch.org/whl/"
# NCCL_VERSION is set by NVIDIA's CUDA container images (seen on the H100 device machine); NCCL never reads it.
HARMLESS_NCCL = ("NCCL_DEBUG", "NCCL_DEBUG_SUBSYS", "NCCL_DEBUG_FILE", "NCCL_VERSION")
NCCL_FIXES = ("rerun with NCCL_DEBUG=INFO to see where it stops; on PCIe GPUs without working peer access try "
              "NCCL_P2P_DISABLE=1; in a container give /dev/shm room (docker run --ipc=host or --shm-size=16g); "
              "unset leftover NCCL_* / MASTER_* variables")


@dataclass
class CheckResult:
    """One row of the report: which check, its verdict, what was found and what to do about it."""

    name: str
    status: str  # ok | warn | fail | skip
    finding: str
    fix: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "status": self.status, "finding": self.finding, "fix": self.fix}


def tables() -> dict[str, Any]:
    """The two compatibility tables, merged: toolkit, minor_compat, pytorch_wheels, gpus, min_cuda_for_cc."""
    from llamakit.data import load_table
    return {**load_table("cuda_drivers.yaml"), **load_table("gpus.yaml")}


def vtuple(v: str | None) -> tuple[int, ...]:
    """'570.26' -> (570, 26); '12.6' -> (12, 6); junk parts are ignored."""
    out = []
    for part in str(v or "").replace("+", ".").split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        if not digits:
            break
        out.append(int(digits))
    return tuple(out)


def gib(n: int | float | None) -> str:
    return "?" if n is None else f"{n / GiB:.1f} GiB"


def fit_module():
    """llamakit.fit, imported when a checkpoint is judged: it pulls in torch, which `doctor --fast` avoids."""
    from llamakit import fit

    return fit
