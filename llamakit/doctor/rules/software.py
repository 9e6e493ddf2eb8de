"""Software and GPU rules: Python, packages, the torch build, the NVIDIA driver, the GPUs and a matmul on each."""

from __future__ import annotations

from typing import Any

from llamakit.doctor.facts import Facts
from llamakit.gpus import GpuInfo
from llamakit.doctor.rules.common import FAIL, OK, SKIP, WARN, WHEEL_URL, CheckResult, gib, tables, vtuple

__all__ = ["cu_tag", "install_command", "toolkit_min", "compat_min", "driver_max_cuda", "gpu_cc", "min_cuda_for",
           "pick_wheel", "arch_support", "rule_python", "rule_packages", "rule_torch_build", "rule_driver",
           "rule_gpus", "rule_gpu_matmul"]


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


def gpu_cc(g: GpuInfo, t: dict[str, Any]) -> tuple[int, int] | None:
    """Compute capability from NVML, else from checks/gpus.yaml by name (longest matching name wins)."""
    if g.compute_capability:
        return g.compute_capability
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
    missing = [k for k in ("torch", "fairscale", "sentencepiece", "tiktoken", "pydantic")
               if k in f.versions and not f.versions[k]]
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

