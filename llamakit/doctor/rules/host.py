"""Host rules: NCCL and the all-reduce, peer access, /dev/shm, RAM, disk, ports, the distributed environment, pynvml
and CUDA_VISIBLE_DEVICES."""

from __future__ import annotations

from llamakit.doctor.facts import Facts
from llamakit.doctor.rules.common import (FAIL, HARMLESS_NCCL, NCCL_FIXES, OK, SKIP, WARN, CheckResult, GiB, MiB,
                                          fit_module, gib, vtuple)

__all__ = ["rule_nccl", "rule_allreduce", "rule_peer_access", "rule_shm", "rule_ram", "rule_disk", "rule_ports",
           "rule_dist_env", "rule_pynvml", "rule_visible_devices"]


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
                               + fit_module().reshard_command(c.path, c.mp * 2))
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
