"""Pure rules: each takes the gathered Facts (and the checks/ tables) and returns one CheckResult with its fix."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from llamakit.doctor.facts import Facts, GpuFact

if TYPE_CHECKING:
    from llamakit.fit import Verdict

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


# ---------------------------------------------------------------- data helpers (read checks/ tables)

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


def cu_tag(cuda: str) -> str:
    """'12.6' -> 'cu126'."""
    major, minor = vtuple(cuda)[:2]
    return f"cu{major}{minor}"


def install_command(cuda: str) -> str:
    """The exact pip command for the torch CUDA build of this CUDA version."""
    return f"pip install --force-reinstall torch --index-url {WHEEL_URL}{cu_tag(cuda)}"


def toolkit_min(cuda: str, t: dict[str, Any]) -> str | None:
    """Minimum driver for full support of this CUDA (nearest listed version at or below it, same major)."""
    want = vtuple(cuda)[:2]
    best = None
    for k, drv in t["toolkit"].items():
        kv = vtuple(k)
        if kv[0] == want[0] and kv <= want and (best is None or kv > best[0]):
            best = (kv, str(drv))
    return best[1] if best else None


def compat_min(cuda: str, t: dict[str, Any]) -> str | None:
    """Minimum driver for this CUDA's major through minor-version compatibility."""
    v = t["minor_compat"].get(str(vtuple(cuda)[0]))
    return str(v) if v else None


def driver_max_cuda(driver: str, t: dict[str, Any]) -> str | None:
    """The highest CUDA whose toolkit minimum this driver meets (when NVML cannot tell us)."""
    best = None
    for k, drv in t["toolkit"].items():
        if vtuple(driver) >= vtuple(str(drv)) and (best is None or vtuple(k) > vtuple(best)):
            best = k
    return best


def gpu_cc(g: GpuFact, t: dict[str, Any]) -> tuple[int, int] | None:
    """Compute capability from NVML, else from checks/gpus.yaml by name (longest matching name wins)."""
    if g.cc:
        return g.cc
    name = g.name.replace("NVIDIA ", "").strip()
    hits = [(len(k), v) for k, v in (t.get("gpus") or {}).items() if k.lower() in name.lower()]
    if not hits:
        return None
    major, minor = vtuple(str(max(hits)[1]))[:2]
    return (major, minor)


def min_cuda_for(cc: tuple[int, int] | None, t: dict[str, Any]) -> str | None:
    """The first CUDA version that can build kernels for this compute capability."""
    if cc is None:
        return None
    table = t.get("min_cuda_for_cc") or {}
    best = None
    for k, v in table.items():
        kv = vtuple(k)[:2]
        if kv <= cc and (best is None or kv > best[0]):
            best = (kv, str(v))
    return best[1] if best else None


def pick_wheel(driver_cuda: str | None, driver: str | None, need_cuda: str | None, t: dict[str, Any]) -> str | None:
    """Newest torch CUDA build this driver runs fully (else through minor-version compat) that has the GPU's kernels."""
    wheels = sorted((str(w) for w in t["pytorch_wheels"]), key=vtuple)
    need = vtuple(need_cuda) if need_cuda else ()
    if driver is None and driver_cuda is None:
        default = str(t.get("default_wheel", "12.6"))
        return default if not need or vtuple(default) >= need else next((w for w in wheels if vtuple(w) >= need), None)
    top = vtuple(driver_cuda) if driver_cuda else vtuple(driver_max_cuda(driver or "0", t) or "0")
    full = [w for w in wheels if vtuple(w)[:2] <= top[:2] and vtuple(w) >= need]
    if full:
        return full[-1]
    # a driver older than the toolkit minimum of the GPU's first CUDA cannot drive that GPU at all
    gpu_ok = not need_cuda or (driver is not None and vtuple(driver) >= vtuple(toolkit_min(need_cuda, t) or "0"))
    if driver and gpu_ok:
        compat = [w for w in wheels if vtuple(w)[0] <= top[0] and vtuple(w) >= need
                  and compat_min(w, t) and vtuple(driver) >= vtuple(compat_min(w, t))]
        if compat:
            return compat[-1]
    return None


def arch_support(cc: tuple[int, int], arch_list: list[str]) -> str | None:
    """'sass' when torch ships kernels that run on this GPU, 'ptx' when only JIT from PTX works, else None."""
    ptx = False
    for a in arch_list:
        kind, _, num = a.partition("_")
        digits = "".join(ch for ch in num if ch.isdigit())
        if not digits:
            continue
        major, minor = int(digits[:-1] or 0), int(digits[-1])
        specific = num[-1:].isalpha()  # sm_90a / sm_100f: arch-specific, only this exact GPU family
        if kind == "sm":
            if (major, minor) == cc or (not specific and major == cc[0] and minor <= cc[1]):
                return "sass"
        elif kind == "compute" and (major, minor) <= cc:
            ptx = True
    return "ptx" if ptx else None


def _gpu_summary(f: Facts) -> str:
    groups: dict[str, int] = {}
    for g in f.gpus:
        groups[g.name] = groups.get(g.name, 0) + 1
    return ", ".join(f"{n} x {name}" for name, n in groups.items())


def _wheel_fix(f: Facts, t: dict[str, Any]) -> str:
    need = max((min_cuda_for(gpu_cc(g, t), t) or "0" for g in f.gpus), key=vtuple, default=None)
    need = need if need and need != "0" else None
    w = pick_wheel(f.driver_cuda, f.driver_version, need, t)
    if w is None:
        want = need or str(t["pytorch_wheels"][-1])
        return (f"upgrade the NVIDIA driver to >= {toolkit_min(want, t)} (CUDA {want}), then "
                f"{install_command(want)}")
    return install_command(w)


# ---------------------------------------------------------------- the rules

def rule_python(f: Facts) -> CheckResult:
    env = {"conda": f"conda env {f.env_name}", "venv": f"venv {f.env_name}"}.get(f.env_kind, "no venv or conda env")
    finding = f"Python {f.python_version} on {f.os_name}; {env}"
    if vtuple(f.python_version)[:2] < (3, 10):
        return CheckResult("python", FAIL, finding + " (llamakit needs Python >= 3.10)",
                           "create an environment with a newer Python: conda create -n llama python=3.11")
    if f.env_kind == "none":
        return CheckResult("python", WARN, finding + " (system Python)",
                           "work in an environment: python3 -m venv ~/venvs/llama && . ~/venvs/llama/bin/activate, "
                           "then install llamakit there")
    return CheckResult("python", OK, finding)


def rule_packages(f: Facts) -> CheckResult:
    shown = ", ".join(f"{k} {v if v else 'MISSING'}" for k, v in f.versions.items())
    if "torch" in f.errors:
        return CheckResult("packages", FAIL, f"torch is installed but does not import: {f.errors['torch']}",
                           "reinstall it: " + install_command("12.6") + " (or the build `llamakit doctor torch-build` "
                           "names)")
    missing = [k for k in ("torch", "fairscale", "sentencepiece", "pydantic") if k in f.versions and not f.versions[k]]
    if missing:
        fixes = [install_command("12.6").replace(" --force-reinstall", "")] if "torch" in missing else []
        rest = [m for m in missing if m != "torch"]
        if rest:
            fixes.append(f"pip install {' '.join(rest)}")
        fix = " && ".join(fixes)
        return CheckResult("packages", FAIL, f"{', '.join(missing)} not installed ({shown})", fix)
    if f.versions.get("torch") and vtuple(f.versions["torch"])[:2] < (2, 1):
        return CheckResult("packages", FAIL, f"torch {f.versions['torch']} is too old (llamakit needs >= 2.1)",
                           "pip install --upgrade torch (with the --index-url `llamakit doctor torch-build` names)")
    return CheckResult("packages", OK, shown)


def rule_torch_build(f: Facts, t: dict[str, Any] | None = None) -> CheckResult:
    t = t or tables()
    if not f.torch_version:
        return CheckResult("torch-build", SKIP, "torch is not importable (see the packages check)")
    if f.torch_cuda:
        return CheckResult("torch-build", OK, f"torch {f.torch_version} built for CUDA {f.torch_cuda}")
    gpus = _gpu_summary(f) or "an NVIDIA driver"
    if f.torch_hip:
        if f.nvidia_present:
            return CheckResult("torch-build", FAIL, f"torch {f.torch_version} is a ROCm (AMD) build but this machine "
                               f"has {gpus}", _wheel_fix(f, t))
        return CheckResult("torch-build", OK, f"torch {f.torch_version} built for ROCm {f.torch_hip}")
    if f.nvidia_present:
        return CheckResult("torch-build", FAIL, f"CPU-only torch {f.torch_version} on a machine with {gpus}: "
                           "CUDA is not available to it", _wheel_fix(f, t))
    return CheckResult("torch-build", WARN, f"CPU-only torch {f.torch_version} and no NVIDIA GPU here: "
                       "llamakit can only run on the CPU (slowly)",
                       f"on a GPU server install a CUDA build, e.g. {install_command(str(t.get('default_wheel', '12.6')))}"
                       " (run `llamakit doctor` there: it picks the build for that driver)")


def rule_driver(f: Facts, t: dict[str, Any] | None = None) -> CheckResult:
    t = t or tables()
    if not f.nvidia_present and not f.driver_version:
        return CheckResult("driver", SKIP, "no NVIDIA driver on this machine")
    if not f.driver_version:
        if f.nvml_error and "not importable" in f.nvml_error:
            return CheckResult("driver", WARN, f"cannot read the driver: {f.nvml_error}",
                               "pip install nvidia-ml-py")
        return CheckResult("driver", FAIL, f"an NVIDIA device is present but NVML does not answer ({f.nvml_error})",
                           "the driver is not loaded or does not match the kernel module: check `nvidia-smi`; "
                           "if the driver was just updated, ask the server admin to reboot; else reinstall the driver")
    top = f.driver_cuda or driver_max_cuda(f.driver_version, t)
    head = f"driver {f.driver_version} (CUDA <= {top or '?'})"
    if not f.torch_cuda:
        return CheckResult("driver", OK, head + "; torch has no CUDA build to compare (see torch-build)")
    full, compat = toolkit_min(f.torch_cuda, t), compat_min(f.torch_cuda, t)
    drv = vtuple(f.driver_version)
    too_old_major = top is not None and vtuple(top)[0] < vtuple(f.torch_cuda)[0]
    if (compat and drv < vtuple(compat)) or too_old_major or (not compat and full and drv < vtuple(full)):
        w = pick_wheel(f.driver_cuda, f.driver_version, None, t)
        # students have no sudo: what they can do themselves comes first
        own = f"install the torch build for this driver: {install_command(w)}; or " if w else ""
        return CheckResult("driver", FAIL, f"{head} is too old for torch's CUDA {f.torch_cuda} "
                           f"(needs >= {full or compat})",
                           f"{own}ask the server admin to upgrade the NVIDIA driver to >= {full or compat} "
                           f"(sudo apt install nvidia-driver-{vtuple(full or compat)[0]}, then reboot)")
    if full and drv < vtuple(full):
        return CheckResult("driver", WARN, f"{head} runs torch's CUDA {f.torch_cuda} only through minor-version "
                           f"compatibility (full support from {full})",
                           f"upgrade the NVIDIA driver to >= {full} when you can (PTX JIT needs it)")
    return CheckResult("driver", OK, f"{head} >= {full or compat} needed by torch's CUDA {f.torch_cuda}")


def rule_gpus(f: Facts, t: dict[str, Any] | None = None) -> CheckResult:
    t = t or tables()
    if not f.gpus:
        if f.gpus_total:
            return CheckResult("gpus", FAIL, f"{f.gpus_total} GPU(s) installed but none visible "
                               f"(CUDA_VISIBLE_DEVICES={f.cuda_visible_devices!r})", "unset CUDA_VISIBLE_DEVICES")
        return CheckResult("gpus", SKIP, "no NVIDIA GPU visible" if not f.nvidia_present else
                           "NVIDIA driver present but no GPU could be listed (see driver)")
    rows, bad, ptx = [], [], []
    for g in f.gpus:
        cc = gpu_cc(g, t)
        sm = f"sm_{cc[0]}{cc[1]}" if cc else "sm_?"
        rows.append(f"GPU{g.index} {g.name} {gib(g.total_bytes)} {sm}")
        if cc and f.torch_cuda and f.torch_arch_list:
            s = arch_support(cc, f.torch_arch_list)
            if s is None:
                bad.append((g, cc, sm))
            elif s == "ptx":
                ptx.append(sm)
    finding = "; ".join(rows)
    if bad:
        g, cc, sm = bad[0]
        need = min_cuda_for(cc, t)
        w = pick_wheel(f.driver_cuda, f.driver_version, need, t)
        if w:
            fix = f"{install_command(w)} (CUDA {w} builds include {sm})"
        else:
            fix = (f"upgrade the NVIDIA driver to >= {toolkit_min(need or '13.0', t)}, then "
                   f"{install_command(need or '13.0')}")
        return CheckResult("gpus", FAIL, f"{g.name} is {sm} but torch {f.torch_version} has kernels for "
                           f"{' '.join(f.torch_arch_list)} only: 'no kernel image is available' ({finding})", fix)
    if ptx:
        return CheckResult("gpus", WARN, f"{finding}; torch has no compiled kernels for {', '.join(sorted(set(ptx)))}, "
                           "only PTX (slow first start, JIT)", _wheel_fix(f, t))
    note = "; torch has kernels for all" if f.torch_arch_list else "; torch arch list unknown (no CUDA build)"
    return CheckResult("gpus", OK, finding + note)


def rule_gpu_matmul(f: Facts, t: dict[str, Any] | None = None) -> CheckResult:
    if not f.gpus:
        return CheckResult("gpu-matmul", SKIP, "no GPU to test")
    if f.matmul is None:
        if "gpu-matmul" in f.active_run:
            return CheckResult("gpu-matmul", FAIL, f"the test could not run: {f.errors.get('active', 'unknown')}",
                               "rerun with `llamakit --debug doctor gpu-matmul`")
        return CheckResult("gpu-matmul", SKIP, "not run (--fast)")
    bad = [r for r in f.matmul if not r.ok]
    if not bad:
        figs = "; ".join(f"GPU{r.device} ok {r.tflops:.0f} TFLOPS" if r.tflops else f"GPU{r.device} ok"
                         for r in f.matmul)
        return CheckResult("gpu-matmul", OK, f"4096x4096 matmul correct on every GPU: {figs}")
    r = bad[0]
    err = r.error or f"wrong result (max error {r.max_err})"
    low = err.lower()
    if "no kernel image" in low:
        fix = rule_gpus(f, t).fix or _wheel_fix(f, t or tables())
    elif "out of memory" in low:
        fix = "another process holds the GPU memory: look at `nvidia-smi` and stop it"
    elif "timed out" in low:
        fix = "the GPU does not answer: check `nvidia-smi` and `sudo dmesg | grep -i xid`; a reboot usually clears it"
    elif "cuda" in low and "available" in low:
        fix = rule_torch_build(f, t).fix or rule_driver(f, t).fix or "check `nvidia-smi`"
    else:
        fix = "run `python -c \"import torch; print(torch.ones(1).cuda())\"` for the full error; check `nvidia-smi`"
    return CheckResult("gpu-matmul", FAIL, f"GPU{r.device}: {err}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1
                                                                        else ""), fix)


def rule_nccl(f: Facts) -> CheckResult:
    if not f.torch_version:
        return CheckResult("nccl", SKIP, "torch is not importable")
    if not f.dist_available:
        return CheckResult("nccl", FAIL, f"torch {f.torch_version} has no torch.distributed",
                           "install an official Linux wheel of torch (see torch-build)")
    if f.gpus and f.torch_cuda:
        if f.nccl_available:
            return CheckResult("nccl", OK, f"NCCL {f.nccl_version or '(version unknown)'} built into torch")
        return CheckResult("nccl", FAIL, "torch was built without NCCL: multi-GPU runs cannot start",
                           "install an official Linux CUDA wheel of torch (see torch-build)")
    if f.gloo_available:
        return CheckResult("nccl", OK, "no usable GPU: multi-process runs use gloo on the CPU"
                           + (f" (NCCL {f.nccl_version} present)" if f.nccl_version else ""))
    return CheckResult("nccl", FAIL, "neither NCCL nor gloo is available in torch",
                       "install an official wheel of torch (see torch-build)")


def rule_allreduce(f: Facts) -> CheckResult:
    r = f.allreduce
    if r is None:
        if "allreduce" not in f.active_run:
            return CheckResult("allreduce", SKIP, "not run (--fast)")
        if "active" in f.errors:
            return CheckResult("allreduce", FAIL, f"the test could not run: {f.errors['active']}",
                               "rerun with `llamakit --debug doctor allreduce`")
        return CheckResult("allreduce", SKIP, "torch.distributed has no usable backend (see nccl)")
    where = f"{r.world} GPU(s)" if r.backend == "nccl" else f"{r.world} CPU processes"
    if r.ok:
        bw = (f", bus bandwidth {r.busbw_gbps:.1f} GB/s" if r.busbw_gbps else
              " (bus bandwidth needs >= 2 processes)")
        return CheckResult("allreduce", OK, f"{r.backend} all-reduce of {r.bytes // MiB} MiB across {where} "
                           f"correct{bw}")
    what = "hung (timed out)" if r.timed_out else "failed"
    fix = NCCL_FIXES if r.backend == "nccl" else ("check that localhost resolves and ports are free "
                                                  "(unset MASTER_ADDR MASTER_PORT); try GLOO_SOCKET_IFNAME=lo")
    return CheckResult("allreduce", FAIL, f"{r.backend} all-reduce across {where} {what}: {r.error or ''}".rstrip(": "),
                       fix)


def rule_peer_access(f: Facts) -> CheckResult:
    if len(f.gpus) < 2:
        return CheckResult("peer-access", SKIP, "fewer than 2 GPUs: no pairs")
    peers = dict(f.p2p)
    if f.allreduce and f.allreduce.peers:
        peers.update(f.allreduce.peers)  # torch's own view, from the probe, wins
    if not peers:
        return CheckResult("peer-access", SKIP, "NVML cannot report peer access here")
    no = sorted(k for k, v in peers.items() if not v)
    if no:
        return CheckResult("peer-access", WARN, f"no peer access between GPU pair(s) {', '.join(no)}: NCCL goes "
                           "through host memory (slower)",
                           "normal on PCIe boards without NVLink; if the all-reduce hangs set NCCL_P2P_DISABLE=1; "
                           "on bare metal check IOMMU/ACS in the BIOS (`nvidia-smi topo -p2p r`)")
    return CheckResult("peer-access", OK, f"peer access between all GPU pairs ({', '.join(sorted(peers))})")


def rule_shm(f: Facts) -> CheckResult:
    if f.shm_bytes is None:
        return CheckResult("shm", WARN, "cannot read /dev/shm", "NCCL needs a /dev/shm; in a container use --ipc=host")
    finding = f"/dev/shm {gib(f.shm_bytes)} ({gib(f.shm_free_bytes)} free)"
    fix = ("start the container with --ipc=host or --shm-size=16g (Kubernetes: an emptyDir with medium: Memory at "
           "/dev/shm); on a host: sudo mount -o remount,size=16G /dev/shm")
    multi = len(f.gpus) > 1 or bool(f.ckpt and f.ckpt.mp > 1)
    if f.shm_bytes < GiB:
        small = f"/dev/shm is only {f.shm_bytes // MiB} MiB"
        if multi:
            return CheckResult("shm", FAIL, small + ": NCCL between processes fails or crashes with it", fix)
        return CheckResult("shm", WARN, small + ": too small for multi-GPU runs", fix)
    if f.shm_free_bytes is not None and f.shm_free_bytes < 256 * MiB:
        return CheckResult("shm", WARN, finding + ": nearly full", "remove stale files in /dev/shm (ls -la /dev/shm)")
    return CheckResult("shm", OK, finding)


def rule_ram(f: Facts) -> CheckResult:
    if f.ram_available_bytes is None:
        return CheckResult("ram", WARN, "cannot read the free memory", "pip install psutil")
    finding = f"{gib(f.ram_available_bytes)} available of {gib(f.ram_total_bytes)}"
    c = f.ckpt
    if c and c.largest_shard_bytes:
        if f.ram_available_bytes < c.largest_shard_bytes:
            return CheckResult("ram", FAIL, f"{finding} < largest shard {gib(c.largest_shard_bytes)}",
                               "free memory (see `free -h`, stop other jobs), or reshard into more, smaller shards: "
                               + _fit().reshard_command(c.path, c.mp * 2))
        if f.ram_available_bytes < c.total_bytes:
            return CheckResult("ram", WARN, f"{finding} < the whole checkpoint {gib(c.total_bytes)}: loading all "
                               "shards at once streams from disk (slow start)", "free memory (see `free -h`)")
        return CheckResult("ram", OK, f"{finding} >= checkpoint {gib(c.total_bytes)} "
                           f"(largest shard {gib(c.largest_shard_bytes)})")
    return CheckResult("ram", OK, finding)


def rule_disk(f: Facts) -> CheckResult:
    if f.disk_free_bytes is None:
        return CheckResult("disk", WARN, f"cannot read free space of {f.disk_path}", "check the output folder exists")
    finding = f"{gib(f.disk_free_bytes)} free at {f.disk_path} (where outputs go)"
    if f.disk_free_bytes < 100 * MiB:
        return CheckResult("disk", FAIL, finding, "free space there or write outputs elsewhere (out_path)")
    if f.disk_free_bytes < GiB:
        return CheckResult("disk", WARN, finding + ": little room for outputs", "free space or choose another out_path")
    return CheckResult("disk", OK, finding)


def rule_ports(f: Facts) -> CheckResult:
    if f.port_29500_free is False:
        return CheckResult("ports", WARN, f"port 29500 (torchrun's default) is in use; {f.free_port} is free",
                           f"llamakit run picks a free port itself; with torchrun pass --master-port {f.free_port} "
                           "(or stop the old run: `ss -ltnp | grep 29500`)")
    return CheckResult("ports", OK, f"port 29500 free; free port e.g. {f.free_port}")


def rule_dist_env(f: Facts) -> CheckResult:
    """Leftover torchrun variables (WORLD_SIZE, RANK, MASTER_*) change how processes start: warn. NCCL_* settings
    are transport and tuning choices (NCCL_P2P_DISABLE=1 is one of our own fixes; NVLink multicast off is a site
    rule on some machines): listed with what the NCCL test (if it ran) said, not flagged."""
    launch = {k: v for k, v in f.leftover_env.items() if not k.startswith("NCCL_")}
    nccl = [f"{k}={v}" for k, v in f.leftover_env.items() if k.startswith("NCCL_") and k not in HARMLESS_NCCL]
    nccl_note = ""
    if nccl:
        ar = f.allreduce
        tested = " (not tested here: no NCCL all-reduce ran)"
        if ar is not None and ar.backend == "nccl":
            tested = " (the NCCL test passed with them)" if ar.ok else " (the NCCL test failed: they may be why)"
        nccl_note = f"; NCCL settings in effect: {', '.join(nccl)}{tested}"
    if launch:
        shown = ", ".join(f"{k}={v}" for k, v in launch.items())
        return CheckResult("dist-env", WARN, f"set in this shell: {shown} (left from an earlier torchrun or a "
                           f"copied script?); they change how processes start{nccl_note}", f"unset {' '.join(launch)}")
    harmless = [k for k in f.leftover_env if k in HARMLESS_NCCL]
    return CheckResult("dist-env", OK, "no WORLD_SIZE / RANK / MASTER_* variables set"
                       + (f" (harmless: {', '.join(harmless)})" if harmless else "") + nccl_note)


def rule_pynvml(f: Facts) -> CheckResult:
    d = f.pynvml_dists
    fix = "pip uninstall -y pynvml nvidia-ml-py3 && pip install --force-reinstall nvidia-ml-py"
    if "pynvml" in d and vtuple(d["pynvml"])[:1] < (12,):
        return CheckResult("pynvml", FAIL, f"the deprecated `pynvml` {d['pynvml']} is installed: its pynvml module "
                           "shadows nvidia-ml-py's (old API, wrong or missing GPU facts)", fix)
    if "nvidia-ml-py3" in d:
        return CheckResult("pynvml", WARN, f"the abandoned `nvidia-ml-py3` {d['nvidia-ml-py3']} is installed and may "
                           "shadow nvidia-ml-py", fix)
    if "nvidia-ml-py" not in d:
        return CheckResult("pynvml", WARN, "nvidia-ml-py is not installed: doctor cannot see GPUs without it",
                           "pip install nvidia-ml-py")
    if "pynvml" in d:
        return CheckResult("pynvml", WARN, f"the deprecated wrapper `pynvml` {d['pynvml']} is installed next to "
                           f"nvidia-ml-py {d['nvidia-ml-py']}", "pip uninstall -y pynvml (nvidia-ml-py is enough)")
    return CheckResult("pynvml", OK, f"nvidia-ml-py {d['nvidia-ml-py']} provides pynvml")


def rule_visible_devices(f: Facts) -> CheckResult:
    v = f.cuda_visible_devices
    if v is None:
        return CheckResult("visible-devices", OK, "CUDA_VISIBLE_DEVICES not set" +
                           (f": all {f.gpus_total} GPU(s) visible" if f.gpus_total else ""))
    if not f.nvml_ok:
        return CheckResult("visible-devices", OK, f"CUDA_VISIBLE_DEVICES={v!r} (no NVML to compare)")
    parts = [p.strip() for p in v.split(",") if p.strip()]
    if parts and not parts[0].isdigit():
        return CheckResult("visible-devices", OK, f"CUDA_VISIBLE_DEVICES={v!r} names GPUs by UUID/MIG")
    if f.gpus_total and not f.gpus:
        return CheckResult("visible-devices", FAIL, f"CUDA_VISIBLE_DEVICES={v!r} hides all {f.gpus_total} GPU(s)",
                           "unset CUDA_VISIBLE_DEVICES (or list GPUs: export CUDA_VISIBLE_DEVICES=0,1)")
    missing = [p for p in parts if p.isdigit() and int(p) >= f.gpus_total]
    if missing:
        return CheckResult("visible-devices", WARN, f"CUDA_VISIBLE_DEVICES={v!r} names GPU(s) {', '.join(missing)} "
                           f"that do not exist ({f.gpus_total} installed)",
                           f"export CUDA_VISIBLE_DEVICES={','.join(str(i) for i in range(f.gpus_total))}")
    if len(f.gpus) < f.gpus_total:
        return CheckResult("visible-devices", WARN, f"CUDA_VISIBLE_DEVICES={v!r}: {len(f.gpus)} of {f.gpus_total} "
                           "GPUs visible", "unset CUDA_VISIBLE_DEVICES to use all GPUs (keep it if you meant it)")
    return CheckResult("visible-devices", OK, f"CUDA_VISIBLE_DEVICES={v!r}: all {f.gpus_total} GPUs visible")


def rule_checkpoint(f: Facts) -> CheckResult:
    if f.recipe and f.recipe.error:
        return CheckResult("checkpoint", FAIL, f"recipe: {f.recipe.error}", f.recipe.fix)
    c = f.ckpt
    if c is None:
        return CheckResult("checkpoint", SKIP, "no checkpoint given (--ckpt-dir DIR or --recipe FILE)")
    if c.error:
        return CheckResult("checkpoint", FAIL, f"{c.path}: {c.error}", c.fix)
    cfg = c.config
    try:
        from llamakit.checkpoint.params import identify
        kind = f"{identify(cfg)}: "
    except Exception:  # noqa: BLE001 - a label is nice to have, never worth a failure
        kind = ""
    return CheckResult("checkpoint", OK, f"{c.path}: {kind}dim {cfg.dim}, {cfg.n_layers} layers, vocab {c.vocab_size}, "
                       f"MP={c.mp} ({c.mp} shard(s), {gib(c.total_bytes)})")


def _fit():
    """llamakit.fit, imported when a checkpoint is judged: it pulls in torch, which `doctor --fast` avoids."""
    from llamakit import fit

    return fit


def _dtype(f: Facts, t: dict[str, Any] | None = None) -> str:
    """The weight dtype run will use (llamakit.fit decides `auto`; the recipe's quantize: int8 counts int8)."""
    r = f.recipe
    quantize = "int8" if r and r.quantize and "int8" in r.quantize else "none"
    ccs = [gpu_cc(g, t or tables()) for g in f.gpus]
    fit = _fit()
    return fit.weight_dtype(fit.resolve_dtype(r.dtype if r else "auto", "cuda", ccs), quantize)


def _verdict(f: Facts, gpu_bytes: int, n_gpus: int) -> Verdict:
    """llamakit.fit's verdict for the checkpoint and recipe on `n_gpus` GPUs of `gpu_bytes`."""
    c, r = f.ckpt, f.recipe
    assert c is not None and r is not None
    return _fit().verdict(c.config, c.vocab_size, c.mp, _dtype(f), r.max_batch_size, r.max_seq_len, gpu_bytes,
                          n_gpus)


def _fix_words(v: Verdict, src: str) -> str:
    """A reshard / int8 / batch change of the verdict as the fix line ('' when nothing on these GPUs fits)."""
    assert v.fix_plan is not None
    parts = []
    if v.mp_to:
        fit = _fit()
        parts.append(f"{fit.reshard_command(src, v.mp_to)}, then use {fit.reshard_destination(src, v.mp_to)} as "
                     "ckpt_dir")
    if v.int8:
        parts.append(f"set `quantize: int8` in the recipe (needs {gib(v.fix_plan.total)} per GPU)")
    if v.batch_to:
        parts.append(f"set max_batch_size: {v.batch_to}")
    return " and ".join(parts)


def rule_mp_plan(f: Facts) -> CheckResult:
    c, r = f.ckpt, f.recipe
    if c is None or c.error or r is None:
        return CheckResult("mp-plan", SKIP, "no checkpoint given" if c is None else "checkpoint not readable (see checkpoint)")
    n, mp = len(f.gpus), c.mp
    if r.device == "cpu" or (r.device == "auto" and n == 0):
        return CheckResult("mp-plan", WARN, f"device cpu: run starts {mp} process(es) on the CPU with gloo (slow)",
                           "use a GPU server for real work")
    if n == 0:
        return CheckResult("mp-plan", FAIL, f"MP={mp} checkpoint but no usable GPU here",
                           "run on the GPU server (see torch-build / driver), or set `device: cpu` in the recipe "
                           "(very slow)")
    if isinstance(r.nproc, int) or str(r.nproc).isdigit():
        k = int(r.nproc)
        if k % mp or k > n:
            return CheckResult("mp-plan", FAIL, f"nproc {k} does not fit MP={mp} on {n} GPU(s)",
                               f"set nproc to a multiple of {mp} up to {n - n % mp or mp}, or `nproc: auto`")
        return CheckResult("mp-plan", OK, f"MP={mp} on {n} GPU(s): run starts {k} processes (MP {mp} x DP {k // mp})")
    if n >= mp:
        dp = n // mp
        idle = f"; GPU(s) beyond {mp * dp} stay idle" if n % mp else ""
        return CheckResult("mp-plan", OK, f"MP={mp} checkpoint on {n} GPU(s): run starts {mp * dp} processes "
                           f"(MP {mp} x DP {dp}){idle}")
    finding = f"MP={mp} checkpoint but only {n} usable GPU(s): it needs one GPU per shard"
    if f.gpus_total >= mp and f.cuda_visible_devices is not None:
        return CheckResult("mp-plan", FAIL, finding, f"unset CUDA_VISIBLE_DEVICES={f.cuda_visible_devices!r}: it hides "
                           f"{f.gpus_total - n} of {f.gpus_total} GPUs")
    smallest = min(g.total_bytes for g in f.gpus)
    v = _verdict(f, smallest, n)
    if v.fix_plan is not None:
        fix = _fix_words(v, c.path)
    else:
        need8 = v.plan.total if v.plan.dtype == "int8" else 0
        fix = (f"even with `quantize: int8` it does not fit {n} GPU(s) of {gib(smallest)}"
               + (f" ({gib(need8)} per GPU)" if need8 else "") + f": use a machine with {mp} GPUs")
    return CheckResult("mp-plan", FAIL, finding, fix)


def rule_memory_fit(f: Facts) -> CheckResult:
    c, r = f.ckpt, f.recipe
    if c is None or c.error or r is None:
        return CheckResult("memory-fit", SKIP, "no checkpoint given" if c is None else "checkpoint not readable (see checkpoint)")
    if not f.gpus or r.device == "cpu":
        return CheckResult("memory-fit", SKIP, "runs on the CPU: no GPU memory to fit (see ram)")
    dtype = _dtype(f)
    mp = c.mp
    small = min(f.gpus, key=lambda g: g.total_bytes)
    busy = min(f.gpus, key=lambda g: g.free_bytes)
    n = max(len(f.gpus), mp)  # whether there are GPUs enough for the shards is mp-plan's finding, not this one's
    empty = _verdict(f, small.total_bytes, n)
    now = _verdict(f, busy.free_bytes, n)  # the batch to suggest fits what is free now
    plan, best, best_empty = empty.plan, now.max_batch, empty.max_batch
    parts = (f"weights {gib(plan.weights)} + KV cache {gib(plan.kv_cache)} (batch {r.max_batch_size} x "
             f"{r.max_seq_len} tokens) + {gib(plan.overhead)} overhead")
    head = f"{dtype} at MP={mp} needs {gib(plan.total)} per GPU = {parts}"
    if plan.total > small.total_bytes:
        if best > 0:
            fix = f"set max_batch_size: {best} (or a shorter max_seq_len)"
        elif best_empty > 0:
            fix = (f"set max_batch_size: {best_empty} once the GPUs are free (other processes hold memory now: "
                   "see `nvidia-smi`)")
        elif empty.fix_plan is not None:
            fix = _fix_words(empty, c.path)
        else:
            fix = ("even with `quantize: int8` it does not fit: reshard to more GPUs (llamakit reshard SRC DST --mp N) "
                   "on a machine that has them")
        return CheckResult("memory-fit", FAIL, f"{head}, but GPU{small.index} has {gib(small.total_bytes)}", fix)
    if plan.total > busy.free_bytes:
        return CheckResult("memory-fit", WARN, f"{head}: fits GPU{busy.index}'s {gib(busy.total_bytes)} but only "
                           f"{gib(busy.free_bytes)} is free now", "another process uses the GPU: see `nvidia-smi`")
    return CheckResult("memory-fit", OK, f"{head}; fits {gib(small.total_bytes)} (max batch at this length: {best})")


Rule = Callable[..., CheckResult]
