"""The registry of doctor checks and the runner: gather facts once, run active tests, apply every rule safely."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from llamakit.doctor import rules as R
from llamakit.doctor.facts import Facts, gather
from llamakit.doctor.network import gather_network, rule_network, rule_rendezvous
from llamakit.doctor.rules import FAIL, WARN, CheckResult


@dataclass(frozen=True)
class Check:
    """A named check: what it looks at, the rule that judges it, and whether it runs an active test."""

    name: str
    about: str
    rule: Callable[[Facts], CheckResult]
    active: bool = False


CHECKS: tuple[Check, ...] = (
    Check("python", "Python version, OS, active venv or conda env", R.rule_python),
    Check("packages", "llamakit, torch, fairscale, sentencepiece, tiktoken, pydantic, nvidia-ml-py installed", R.rule_packages),
    Check("torch-build", "torch built for CUDA, ROCm or CPU only (and the right install command)", R.rule_torch_build),
    Check("driver", "NVIDIA driver and the highest CUDA it supports vs torch's CUDA", R.rule_driver),
    Check("gpus", "each GPU's name, memory, compute capability vs torch's compiled kernels", R.rule_gpus),
    Check("gpu-matmul", "each GPU runs a 4096x4096 matmul correctly (child process, timeout)", R.rule_gpu_matmul,
          active=True),
    Check("nccl", "NCCL (GPUs) or gloo (CPU) available in torch, and its version", R.rule_nccl),
    Check("allreduce", "a real all-reduce across all GPUs (NCCL) or 2 CPU processes (gloo), checked and timed",
          R.rule_allreduce, active=True),
    Check("peer-access", "peer-to-peer access between each pair of GPUs", R.rule_peer_access),
    Check("shm", "/dev/shm size (NCCL needs it; Docker's default is 64 MB)", R.rule_shm),
    Check("ram", "free RAM vs the checkpoint's largest shard", R.rule_ram),
    Check("disk", "free disk where outputs go", R.rule_disk),
    Check("network", "the interface NCCL and gloo would use between nodes (and towards --master-addr)",
          lambda f: rule_network(f.network)),
    Check("rendezvous", "--master-addr resolves, is not the login node, and its --master-port answers",
          lambda f: rule_rendezvous(f.network)),
    Check("ports", "port 29500 (torchrun's default) free, and a free port", R.rule_ports),
    Check("dist-env", "leftover WORLD_SIZE / RANK / LOCAL_RANK / MASTER_* variables; NCCL_* settings listed", R.rule_dist_env),
    Check("pynvml", "nvidia-ml-py present, no deprecated pynvml shadowing it", R.rule_pynvml),
    Check("visible-devices", "CUDA_VISIBLE_DEVICES and which GPUs it leaves visible", R.rule_visible_devices),
    Check("checkpoint", "the checkpoint (--ckpt-dir or the recipe's) opens: config, MP, shards", R.rule_checkpoint),
    Check("mp-plan", "checkpoint MP vs usable GPUs: how many processes run starts", R.rule_mp_plan),
    Check("memory-fit", "weights + KV cache of the recipe's batch and length fit each GPU", R.rule_memory_fit),
)
BY_NAME = {c.name: c for c in CHECKS}


@dataclass
class DoctorReport:
    """Everything one doctor run found: the rows, the facts behind them and how long it took."""

    results: list[CheckResult]
    facts: Facts
    seconds: float
    strict: bool = False
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def counts(self) -> dict[str, int]:
        out = {"ok": 0, "warn": 0, "fail": 0, "skip": 0}
        for r in self.results:
            out[r.status] = out.get(r.status, 0) + 1
        return out

    @property
    def exit_code(self) -> int:
        """1 when a check failed (with strict: or warned), else 0."""
        bad = {FAIL, WARN} if self.strict else {FAIL}
        return 1 if any(r.status in bad for r in self.results) else 0


def apply_rule(check: Check, facts: Facts) -> CheckResult:
    """Run one rule; a crash becomes a failed row carrying the error, never a traceback."""
    try:
        res = check.rule(facts)
        if not isinstance(res, CheckResult):
            raise TypeError(f"rule returned {type(res).__name__}")
        return res
    except Exception as e:  # noqa: BLE001
        return CheckResult(check.name, FAIL, f"check crashed: {type(e).__name__}: {e}",
                           "report this to the llamakit maintainers with `llamakit doctor --report doctor.txt`")


def run_doctor(only: str | None = None, ckpt_dir: str | Path | None = None, recipe: str | Path | None = None,
               fast: bool = False, strict: bool = False, out_dir: str | Path | None = None,
               timeout: float = 120.0, master_addr: str | None = None,
               master_port: int | None = None) -> DoctorReport:
    """Gather facts, run the active tests unless `fast`, and judge every check (or just `only`)."""
    from llamakit.errors import LlamakitError

    if only is not None and only not in BY_NAME:
        raise LlamakitError(f"no doctor check named {only!r}", "see `llamakit doctor --list`")
    t0 = time.monotonic()
    facts = gather(ckpt_dir=ckpt_dir, recipe=recipe, out_dir=out_dir)
    chosen = [BY_NAME[only]] if only else list(CHECKS)
    if any(c.name in ("network", "rendezvous") for c in chosen):
        try:
            facts.network = gather_network(master_addr, master_port)
        except Exception as e:  # noqa: BLE001 - the rules report missing facts as skipped
            facts.errors["network"] = f"{type(e).__name__}: {e}"
    if only == "peer-access":
        active = {"allreduce"} if not fast else set()  # torch's own view of peer access comes from that probe
    else:
        active = {c.name for c in chosen if c.active} if not fast else set()
    if active:
        from llamakit.doctor.active import run_active
        facts.active_run = sorted(active)
        try:
            run_active(facts, active, timeout=timeout)
        except Exception as e:  # noqa: BLE001 - reported by the rules as missing results
            facts.errors["active"] = f"{type(e).__name__}: {e}"
    results = [apply_rule(c, facts) for c in chosen]
    return DoctorReport(results, facts, time.monotonic() - t0, strict)
