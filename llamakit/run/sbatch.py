"""`llamakit run RECIPE --sbatch`: the SLURM batch script that runs the same recipe on one node, on several nodes
through torchrun's rendezvous, or as an array of independent shares; resume = submit the same script again."""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path

from llamakit.errors import LlamakitError


@dataclass(frozen=True)
class SbatchSpec:
    """What the script needs: the recipe, the `llamakit run` arguments to repeat, and the SLURM request."""

    recipe: Path  # absolute
    run_args: list[str] = field(default_factory=list)  # --set/--out/--nproc as the user gave them
    nodes: int = 1
    gpus_per_node: int = 1  # 0: a CPU-only run (no --gpus-per-node line)
    partition: str | None = None
    time: str | None = None
    array: bool = False  # each node runs its share of the prompts on its own (no rendezvous); merge at the end
    mp_across_nodes: bool = False
    python: str = sys.executable
    workdir: Path = field(default_factory=Path.cwd)
    out_path: Path | None = None  # for the merge line of the array mode
    cpus_per_task: int | None = None


def check_spec(spec: SbatchSpec, mp: int) -> None:
    """The SLURM request must hold whole model-parallel groups on each node (unless asked otherwise)."""
    if spec.nodes < 1:
        raise LlamakitError(f"--nodes {spec.nodes} is out of range", "give 1 or more nodes", "--nodes")
    if spec.gpus_per_node < 0:
        raise LlamakitError(f"--gpus-per-node {spec.gpus_per_node} is out of range", "give 0 (CPU) or more",
                            "--gpus-per-node")
    g = spec.gpus_per_node
    if g and g % mp and not (spec.mp_across_nodes and not spec.array and (g * spec.nodes) % mp == 0):
        hint = (f"; a model-parallel group across nodes talks over the network for every layer of every token "
                f"(slow on Ethernet): if you mean it, add --mp-across-nodes" if (g * spec.nodes) % mp == 0
                and not spec.array else "")
        raise LlamakitError(f"the checkpoint has MP={mp}, which does not divide --gpus-per-node {g}",
                            f"use --gpus-per-node {mp * max(1, g // mp)} (a multiple of {mp}){hint}",
                            "--gpus-per-node")


def sbatch_script(spec: SbatchSpec) -> str:
    """The whole script, ready for `sbatch FILE`."""
    run = [spec.python, "-m", "llamakit", "run", str(spec.recipe), *spec.run_args]
    name = spec.recipe.stem
    gpus = spec.gpus_per_node
    cpus = spec.cpus_per_task or (4 * gpus if gpus else 8)
    head = ["#!/bin/bash",
            f"# llamakit run {spec.recipe.name} on SLURM, written by `llamakit run --sbatch` on {date.today()}.",
            "# Submit with `sbatch THIS_FILE`. If the job ends early (time limit, cancel, a failed node), submit the",
            "# same file again: the run resumes and generates every prompt exactly once.",
            "# One task per node: that `llamakit run` starts one process per GPU itself. SLURM gives a task one",
            "# CPU core unless asked, and all of the node's processes would share it: hence --cpus-per-task.",
            f"#SBATCH --job-name=llamakit-{name}",
            "#SBATCH --nodes=1" if spec.array else f"#SBATCH --nodes={spec.nodes}",
            "#SBATCH --ntasks-per-node=1",
            f"#SBATCH --cpus-per-task={cpus}"]
    if spec.array:
        head.insert(4, f"# Array task K (0..{spec.nodes - 1}) generates share K of {spec.nodes} of the prompts.")
        head.append(f"#SBATCH --array=0-{spec.nodes - 1}")
    if gpus:
        head.append(f"#SBATCH --gpus-per-node={gpus}")
    if spec.partition:
        head.append(f"#SBATCH --partition={spec.partition}")
    if spec.time:
        head.append(f"#SBATCH --time={spec.time}")
    head.append(f"#SBATCH --output=llamakit-{name}-%{'A_%a' if spec.array else 'j'}.out")
    body = ["", "set -euo pipefail", f"cd {shlex.quote(str(spec.workdir))}", ""]
    if spec.array:
        body += _array_body(spec, run)
    elif spec.nodes == 1:
        body += ["# One node: no rendezvous to set up; llamakit picks a free port on this node itself.",
                 f"exec {shlex.join(run)}"]
    else:
        body += _multinode_body(spec, run)
    return "\n".join(head + body) + "\n"


NETWORK_COMMENT = [
    "# Network: NCCL (GPUs) and gloo (CPU) pick a network interface by themselves. If the start hangs, or the log",
    "# says 'connection refused' / 'no route to host', they picked one the nodes cannot reach each other on",
    "# (a docker bridge, or the management Ethernet while the nodes talk over InfiniBand). Name the right one;",
    "# `llamakit doctor --master-addr HOST` shows the one it would pick and `ip -brief addr` lists them:",
    "# export NCCL_SOCKET_IFNAME=ib0 GLOO_SOCKET_IFNAME=ib0",
]


def _multinode_body(spec: SbatchSpec, run: list[str]) -> list[str]:
    """srun starts one `llamakit run` per node; the first node of the allocation hosts torchrun's rendezvous."""
    flags = ["--nnodes", "$SLURM_NNODES", "--node-rank", "$SLURM_NODEID", "--master-addr", "$MASTER_ADDR",
             "--master-port", "$MASTER_PORT"] + (["--mp-across-nodes"] if spec.mp_across_nodes else [])
    node_cmd = shlex.join(run) + " " + " ".join(f'"{f}"' if f.startswith("$") else f for f in flags)
    return [
        "# The rendezvous runs on the first node of this job (a compute node, never the login node), on a port",
        "# derived from the job id so that two jobs sharing a node do not collide.",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p)',
        "MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))",
        "export MASTER_ADDR MASTER_PORT",
        *NETWORK_COMMENT,
        "",
        "# One task per node: each starts the same run; --kill-on-bad-exit ends every node when one fails.",
        "# (srun of SLURM 22.05 to 23.02 does not pass the job's --cpus-per-task on: it is given explicitly.)",
        'srun --nodes="$SLURM_NNODES" --ntasks="$SLURM_NNODES" --ntasks-per-node=1 \\',
        '  --cpus-per-task="$SLURM_CPUS_PER_TASK" --kill-on-bad-exit=1 \\',
        f"  bash -c {shlex.quote('exec ' + node_cmd)}",
    ]


def _array_body(spec: SbatchSpec, run: list[str]) -> list[str]:
    """Each array task runs its share alone (no rendezvous, no network between nodes); merge when all are done."""
    out = str(spec.out_path) if spec.out_path else "OUT.jsonl"
    share = ["--share", f"$SLURM_ARRAY_TASK_ID/{spec.nodes}"]
    return [
        f"# Array task K runs prompts K, K+{spec.nodes}, K+{2 * spec.nodes}, ... on its own node, writing part files",
        "# next to the output. When every task has finished, merge the parts into the output in input order:",
        f"#   {shlex.join([spec.python, '-m', 'llamakit', 'merge', out])}",
        "# (or submit that line as a job with --dependency=afterok:ARRAY_JOB_ID). A share that is already complete",
        "# finishes at once, so re-submitting the whole array resumes only what is missing.",
        f'exec {shlex.join(run)} {share[0]} "{share[1]}"',
    ]


def sbatch_for_recipe(recipe: str | Path, run_args: list[str], overrides: list[str] | None = None,
                      flags: dict | None = None, nodes: int = 1, gpus_per_node: int | None = None,
                      partition: str | None = None, time: str | None = None, array: bool = False,
                      mp_across_nodes: bool = False) -> str:
    """Check the recipe and the checkpoint's MP here (the login node: no GPU needed), then write the script.
    --gpus-per-node defaults to the checkpoint's MP (0 for device: cpu)."""
    from llamakit.checkpoint.shards import open_checkpoint
    from llamakit.run.recipe import load_recipe, resolve_paths

    lr = load_recipe(recipe, overrides, flags)
    paths = resolve_paths(lr)
    mp = open_checkpoint(paths.ckpt_dir).mp
    if gpus_per_node is None:
        nproc = lr.recipe.nproc
        gpus_per_node = 0 if lr.recipe.device == "cpu" else (nproc if isinstance(nproc, int) else mp)
    spec = SbatchSpec(recipe=lr.path.resolve(), run_args=run_args, nodes=nodes, gpus_per_node=gpus_per_node,
                      partition=partition, time=time, array=array, mp_across_nodes=mp_across_nodes,
                      out_path=paths.out_path)
    check_spec(spec, mp)
    return sbatch_script(spec)
