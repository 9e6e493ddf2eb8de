"""What GPUs this machine has, read through NVML (nvidia-ml-py) without initialising CUDA; [] when none."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML sees it (index is NVML's, before CUDA_VISIBLE_DEVICES): the one GPU record of llamakit."""

    index: int
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: tuple[int, int] | None
    # what the driver and firmware keep (NVML's v2 memory info): CUDA reports total - this as the GPU's total
    # (an H200: NVML 143,771 MiB, torch.cuda.mem_get_info 143,155 MiB); 0 where NVML does not say
    reserved_bytes: int = 0

    @property
    def cuda_total_bytes(self) -> int:
        """The total CUDA reports (torch.cuda.mem_get_info): what the engine sizes from."""
        return self.total_bytes - self.reserved_bytes


def apply_visible_devices(indices: list[int], env: str | None) -> list[int]:
    """Apply a CUDA_VISIBLE_DEVICES value (numeric form) to NVML's indices, as CUDA would."""
    if env is None:
        return indices
    picked = []
    for part in env.split(","):
        part = part.strip()
        if not part.isdigit():
            break  # CUDA stops at the first entry it cannot parse (UUIDs are not mapped here)
        if int(part) in indices:
            picked.append(int(part))
    return picked


def read_gpu(pynvml: Any, index: int) -> GpuInfo:
    """One GPU through an initialised NVML (doctor reads more of NVML around it, with the same record)."""
    h = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = pynvml.nvmlDeviceGetName(h)
    name = name.decode() if isinstance(name, bytes) else str(name)
    mem = pynvml.nvmlDeviceGetMemoryInfo(h)
    try:
        cc: tuple[int, int] | None = tuple(int(x) for x in pynvml.nvmlDeviceGetCudaComputeCapability(h))  # type: ignore[assignment]
    except Exception:  # noqa: BLE001 - old drivers / bindings: the name still finds it in checks/gpus.yaml
        cc = None
    try:  # v2 splits off what the driver reserves (drivers >= 510); a bogus figure is ignored
        reserved = int(pynvml.nvmlDeviceGetMemoryInfo(h, version=pynvml.nvmlMemory_v2).reserved)
        reserved = reserved if 0 < reserved < int(mem.total) // 10 else 0
    except Exception:  # noqa: BLE001 - older drivers / bindings: NVML's total as it is
        reserved = 0
    return GpuInfo(index, name, int(mem.total), int(mem.free), cc, reserved)


def detect_gpus() -> list[GpuInfo]:
    """The GPUs CUDA will see (CUDA_VISIBLE_DEVICES applied), via NVML; [] when NVML, the driver or GPUs are absent."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # NVMLError_LibraryNotFound / DriverNotLoaded: no NVIDIA driver here
        return []
    try:
        count = pynvml.nvmlDeviceGetCount()
        indices = apply_visible_devices(list(range(count)), os.environ.get("CUDA_VISIBLE_DEVICES"))
        out = []
        for i in indices:
            out.append(read_gpu(pynvml, i))
        return out
    except Exception:
        return []
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass
