"""The run plan: MP x DP, devices, dtype and backend from the recipe and the GPUs, and the torchrun command for it."""

from __future__ import annotations

import json
import os
import socket
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, TypeVar

from llamakit.checkpoint.shards import Checkpoint, open_checkpoint
from llamakit.engine.api import EngineConfig
from llamakit.distributed import free_port
from llamakit.errors import LlamakitError
from llamakit.gpus import GpuInfo
from llamakit.fit import mp_within, reshard_command, reshard_destination, resolve_dtype, verdict
from llamakit.memory import fmt_gib, weight_dtype
from llamakit.run.capacity import memory_line, typical_length
from llamakit.run.decoding import describe_sampling, plan_rows, recipe_sampling, versions
from llamakit.run.output import scan_output, space_note
from llamakit.run.nodes import (Nodes, check_layout, check_rendezvous_host, in_share, local_processes,
                                torchrun_node_args)
from llamakit.run.prompts import Prepared, Prompt, prepare, prompt_encoder, read_prompts
from llamakit.run.recipe import LoadedRecipe, RunPaths, load_recipe, resolve_paths
from llamakit.run.resume import RunLock, check_same_settings, fingerprints
from llamakit.tokenizer import Tokenizer, find_tokenizer
from llamakit.units import plural

T = TypeVar("T")


@dataclass(frozen=True)
class Devices:
    """Where the ranks run: device kind, MP x DP, dtype and the process-group backend."""

    device: str  # cuda | cpu
    mp: int
    dp: int
    dtype: str  # bf16 | fp16 | fp32
    backend: str  # nccl | gloo
    gpus: tuple[GpuInfo, ...] = ()  # the GPUs used, local rank i -> gpus[i]

    @property
    def nproc(self) -> int:
        return self.mp * self.dp


def choose_devices(device: str, dtype: str, nproc: str | int, mp: int, gpus: list[GpuInfo], cuda_ok: bool,
                   where: str = "recipe", ckpt_dir: str | Path = "CKPT_DIR",
                   shape: tuple[Any, int, int, int, str] | None = None, nproc_where: str | None = None) -> Devices:
    """Pure rule: recipe device/dtype/nproc + checkpoint MP + visible GPUs -> Devices, or an error with the fix.
    `shape` (config, vocab rows, max_batch_size, max_seq_len, quantize) lets the fix name a reshard that fits.
    `where` is the device line; `nproc_where` the nproc line or the --nproc flag (errors about nproc blame it)."""
    nwhere = nproc_where or where
    flag = nwhere.startswith("--")  # set by --nproc: the fix speaks of the flag
    setting = "--nproc" if flag else "nproc:"
    if device == "auto":
        device = "cuda" if cuda_ok and gpus else "cpu"
    if device == "cuda":
        if not cuda_ok or not gpus:
            raise LlamakitError("device: cuda, but no GPU is usable (PyTorch sees no CUDA device)",
                                "run `llamakit doctor` to see why, or set device: cpu", where)
        if len(gpus) < mp:
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            vis = f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
            raise LlamakitError(f"this checkpoint has MP={mp} shards and needs {mp} GPUs, but {len(gpus)} "
                                f"{'is' if len(gpus) == 1 else 'are'} visible{vis}",
                                _fewer_gpus_fix(mp, gpus, ckpt_dir, dtype, shape), where)
        if nproc == "auto":
            dp = len(gpus) // mp
        else:
            assert isinstance(nproc, int)
            if nproc % mp:
                raise LlamakitError(f"nproc {nproc} is not a multiple of the checkpoint's MP={mp}",
                                    f"use {setting} auto or a multiple of {mp}", nwhere)
            if nproc > len(gpus):
                raise LlamakitError(f"nproc {nproc} needs {nproc} GPUs, {len(gpus)} are visible",
                                    f"use {setting} auto or at most {len(gpus) // mp * mp}", nwhere)
            dp = nproc // mp
        used = tuple(gpus[: mp * dp])
        if dtype == "auto":
            dtype = resolve_dtype(dtype, "cuda", [g.compute_capability for g in used])
        elif dtype == "bf16":
            old = [g for g in used if g.compute_capability is not None and g.compute_capability < (8, 0)]
            if old:
                cc = ".".join(map(str, old[0].compute_capability or ()))
                raise LlamakitError(f"dtype bf16 needs compute capability >= 8.0; GPU {old[0].index} "
                                    f"({old[0].name}) has {cc}", "set dtype: fp16 (or auto)", where)
        return Devices("cuda", mp, dp, dtype, "nccl", used)
    # cpu: one replica unless nproc asks for more; gloo carries the model-parallel all-reduces
    if nproc == "auto":
        dp = 1
    else:
        assert isinstance(nproc, int)
        if nproc % mp:
            raise LlamakitError(f"nproc {nproc} is not a multiple of the checkpoint's MP={mp}",
                                f"use {setting} auto or a multiple of {mp}", nwhere)
        dp = nproc // mp
    return Devices("cpu", mp, dp, resolve_dtype(dtype, "cpu", []), "gloo")


def _fewer_gpus_fix(mp: int, gpus: list[GpuInfo], ckpt_dir: str | Path, dtype: str,
                    shape: tuple[Any, int, int, int, str] | None) -> str:
    """The exact reshard command to the MP llamakit.fit chooses for the visible GPUs (with int8 if it needs it)."""
    n, src = len(gpus), str(ckpt_dir).rstrip("/")
    target, int8 = mp_within(mp, n), False
    if shape is not None:
        config, vocab, batch, seq, quantize = shape
        wd = weight_dtype(resolve_dtype(dtype, "cuda", [g.compute_capability for g in gpus]), quantize)
        v = verdict(config, vocab, mp, wd, batch, seq, min(g.total_bytes for g in gpus), n)
        if v.fix_plan is None:
            return (f"this model does not fit {n} GPU(s) of {fmt_gib(min(g.total_bytes for g in gpus))} at any MP, "
                    f"not even with quantize: int8: make {mp} GPUs visible")
        target, int8 = v.mp_to or target, v.int8
    dst = reshard_destination(src, target)
    then = " and quantize: int8" if int8 else " (if it then does not fit, add quantize: int8)" if shape is None else ""
    return (f"convert it to {target} shard(s) once: `{reshard_command(src, target)}` and set ckpt_dir to {dst}{then}; "
            f"or make {mp} GPUs visible")


def cuda_facts() -> tuple[list[GpuInfo], bool]:
    """Visible GPUs (NVML, no CUDA context) and whether PyTorch can use CUDA at all."""
    from llamakit.gpus import detect_gpus

    import torch

    gpus = detect_gpus()
    try:
        ok = bool(torch.cuda.is_available())
    except Exception:  # a broken driver can raise here; treat as no CUDA
        ok = False
    if ok and not gpus:  # NVML unavailable but CUDA works: ask PyTorch (this initialises CUDA here, rarely hit)
        gpus = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(GpuInfo(i, p.name, int(p.total_memory), int(p.total_memory), (p.major, p.minor)))
    return gpus, ok


def omp_threads(nproc: int, cpus: int | None = None) -> int:
    """Threads per process so the ranks share the cores instead of oversubscribing them."""
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cpus // max(1, nproc))


@dataclass
class Plan:
    """Everything a worker needs, decided and validated by the launcher; written as JSON for torchrun's ranks."""

    mp: int
    dp: int
    device: str
    dtype: str
    backend: str
    gpus: list[str]  # "0: NVIDIA RTX A6000, 48.0 GiB, cc 8.6" per used GPU, for the plan display
    engine: dict[str, Any]  # EngineConfig fields
    max_gen_len: int
    ckpt_dir: str
    tokenizer_path: str
    prompt_path: str
    out_path: str
    log_path: str
    run_dir: str
    work_path: str
    total: int  # prompts in the input
    pending: int  # prompts the workers will generate
    already_done: int  # rows already in out_path (resume)
    long_prompts: int  # prompts truncated or skipped by on_long_prompt
    omp_threads: int
    master_port: int
    memory: str = ""  # per-GPU memory estimate, for display
    chat_format: str = "none"  # the recipe's (rows may set their own in their params object)
    notes: list[str] = field(default_factory=list)
    # what the text depends on, by content rather than path (a moved project folder is the same run):
    # "checkpoint" (params.json + shard names and sizes) and "tokenizer" (the file), as short sha256 digests
    fingerprints: dict[str, str] = field(default_factory=dict)
    # runs over several nodes, or one share of an array (llamakit.run.nodes.Nodes as a dict); {} on one machine.
    # Then every replica writes its own part file and this node starts nproc_per_node of the nproc processes.
    nodes: dict[str, Any] = field(default_factory=dict)
    nproc_per_node: int = 0
    launcher: str = ""  # host-pid of the launcher that wrote this plan (names its node's files)
    prompt_field: str = "prompt"  # with prompt_path: what `llamakit merge` needs to restore the input order
    id_field: str = "id"
    sampling: dict[str, Any] = field(default_factory=dict)  # the recipe's decoding keys (run.decoding), for resume
    versions: dict[str, Any] = field(default_factory=dict)  # llamakit, torch, CUDA, driver, GPUs: to describe a dataset

    @property
    def nproc(self) -> int:
        return self.mp * self.dp

    @property
    def local_nproc(self) -> int:
        return self.nproc_per_node or self.nproc

    def save(self, path: Path) -> None:
        """Atomically (temp file + rename): a kill mid-write never leaves a torn plan behind. The temp name is this
        process's own, since every node of a multi-node run records the same plan.json on a shared file system."""
        tmp = path.with_name(f"{path.name}.{socket.gethostname()}-{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(self), ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


def describe_gpu(g: GpuInfo) -> str:
    cc = f", cc {g.compute_capability[0]}.{g.compute_capability[1]}" if g.compute_capability else ""
    return f"{g.index}: {g.name}, {fmt_gib(g.total_bytes)}{cc}"


# How often torchrun checks its workers: after the last worker exits, torchrun (and so the run) ends up to this much
# later, and a failed rank's peers are stopped that much later. torchrun's own default; each check is a waitpid.
MONITOR_INTERVAL_S = 0.1


def torchrun_argv(plan: Plan, plan_file: Path, module: str = "llamakit.run.worker") -> list[str]:
    """The exact torchrun command (argv list, never a shell string) that starts every rank of this plan (of this
    node's ranks, in a run over several nodes; `module`: the worker, llamakit.score.worker for `llamakit score`)."""
    return [sys.executable, "-m", "torch.distributed.run",
            *torchrun_node_args(Nodes.from_dict(getattr(plan, "nodes", None)),  # score's plan: one node
                                getattr(plan, "nproc_per_node", 0) or plan.nproc, plan.master_port),
            "--max_restarts", "0", "--monitor_interval", str(MONITOR_INTERVAL_S),
            "-m", module, str(plan_file)]


def worker_env(plan: Plan, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for torchrun: thread counts, and the workers' imports resolving to this same llamakit."""
    env = dict(os.environ if base is None else base)
    env["OMP_NUM_THREADS"] = str(plan.omp_threads)
    env.setdefault("MKL_NUM_THREADS", str(plan.omp_threads))
    env["PYTHONUNBUFFERED"] = "1"
    pkg_parent = str(Path(__file__).resolve().parents[2])  # so `-m llamakit.run.worker` finds a checkout too
    env["PYTHONPATH"] = pkg_parent + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    if plan.device == "cuda" and plan.backend == "nccl":
        env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    return env


def _nodes_text(plan: Plan) -> str:
    """', over 2 nodes (this is node 1 of 2: 1 process), rendezvous node01:29400' for a run over several nodes."""
    nodes = Nodes.from_dict(plan.nodes)
    if nodes.share:
        return f"; {nodes.label()} of the prompts, into part files (merge: llamakit merge OUT)"
    if not nodes.multi:
        return ""
    where = nodes.rdzv_endpoint or f"{nodes.master_addr}:{nodes.master_port}"
    return (f", over {nodes.nnodes} nodes (this is {nodes.label()}: {plan.local_nproc} process"
            f"{'es' if plan.local_nproc > 1 else ''}), rendezvous {where}, one part file per replica")


def describe(plan: Plan, argv: list[str]) -> list[str]:
    """Human lines for --dry-run and the log: the plan and the command."""
    import shlex

    lines = [
        f"checkpoint   {plan.ckpt_dir}  (MP={plan.mp})",
        f"tokenizer    {plan.tokenizer_path}",
        f"prompts      {plan.prompt_path}: {plan.total} prompts, {plan.already_done} already in the output, "
        f"{plan.pending} to generate" + (f", {plan.long_prompts} too long (on_long_prompt)" if plan.long_prompts
                                         else ""),
        f"output       {plan.out_path}",
        f"log          {plan.log_path}",
        f"parallelism  MP={plan.mp} x DP={plan.dp} = {plural(plan.nproc, 'process')}, "
        f"backend {plan.backend}" + _nodes_text(plan),
        f"devices      {plan.device}" + (": " + "; ".join(plan.gpus) if plan.gpus else
                                         f" ({plural(plan.omp_threads, 'thread')} per process)"),
        f"dtype        {plan.dtype}" + (f", quantize {plan.engine['quantize']}"
                                        if plan.engine.get("quantize", "none") != "none" else ""),
        f"batch        max_batch_size {plan.engine['max_batch_size']} per replica, max_seq_len "
        f"{plan.engine['max_seq_len']}, max_gen_len {plan.max_gen_len}"
        + ("; batch-invariant (a prompt's text and logprobs the same bits at any batch, also when preempted)"
           if plan.engine.get("batch_invariant") else ""),
        "sampling     " + describe_sampling(plan.sampling or {k: plan.engine[k] for k in ("temperature", "top_p",
                                                                                         "seed")}),
    ]
    if plan.memory:
        lines.append(f"memory       {plan.memory}")
    lines += [f"note         {n}" for n in plan.notes]
    lines.append(f"command      {shlex.join(argv)}")
    return lines


# ---------------------------------------------------------------- the whole validation (no side effects)


@dataclass
class Setup:
    """A fully validated run: nothing has been written yet."""

    loaded: LoadedRecipe
    paths: RunPaths
    ckpt: Checkpoint
    prompts: list[Prompt]
    todo: list[Prepared]  # prompts without a row yet (incl. ones on_long_prompt skips)
    plan: Plan
    argv: list[str]
    torn_bytes: int

    @property
    def plan_file(self) -> Path:
        """The plan this node's workers read; plan.json also records the settings the output is made with."""
        name = f"plan.{self.plan.launcher}.json" if Nodes.from_dict(self.plan.nodes).multi else "plan.json"
        return Path(self.plan.run_dir) / name


def check_tokenizer(ckpt: Checkpoint, tok: Tokenizer) -> None:
    """The tokenizer's ids must index the checkpoint's embedding rows one to one."""
    if tok.n_words != ckpt.vocab_rows:
        raise LlamakitError(f"tokenizer has {tok.n_words} tokens but the checkpoint's embedding has "
                            f"{ckpt.vocab_rows} rows ({ckpt.path})",
                            "use the tokenizer.model that came with this checkpoint (set tokenizer_path)",
                            tok.path.resolve())


def at_key(lr: LoadedRecipe, key: str, path: Path, step: Callable[[], T]) -> T:
    """Run `step`; an error about `path` itself (no line of its own) is told at the recipe line that set the path:
    `recipe.yaml:3: ckpt_dir /data/LLaMA/13b: checkpoint folder does not exist`. Errors inside a file (a
    prompt's line, a shard) keep their own place."""
    try:
        return step()
    except LlamakitError as err:
        if err.line is not None or (err.where is not None and Path(err.where).resolve() != Path(path).resolve()):
            raise
        place, line = lr.where(key)
        raise LlamakitError(f"{key} {path}: {err.what}", err.fix, place, line) from None


def plan_run(recipe: str | Path, overrides: list[str] | None = None, flags: dict[str, Any] | None = None,
             gpu_facts: tuple[list, bool] | None = None, nodes: Nodes | None = None) -> Setup:
    """Validate recipe, checkpoint, tokenizer, prompts and output; decide MP x DP; write nothing. Over several nodes
    every node makes the same checks from the same files, so each refuses a bad plan before anything starts."""
    nodes = nodes or Nodes()
    check_rendezvous_host(nodes)
    lr = load_recipe(recipe, overrides, flags)
    r = lr.recipe
    paths = resolve_paths(lr)
    ckpt = at_key(lr, "ckpt_dir", paths.ckpt_dir, lambda: open_checkpoint(paths.ckpt_dir))
    tok_path = paths.tokenizer_path or at_key(lr, "tokenizer_path", paths.ckpt_dir,
                                              lambda: find_tokenizer(paths.ckpt_dir))
    tok = at_key(lr, "tokenizer_path", tok_path, lambda: Tokenizer(tok_path))
    at_key(lr, "tokenizer_path", tok.path.resolve(), lambda: check_tokenizer(ckpt, tok))
    prompts = at_key(lr, "prompt_path", paths.prompt_path,
                     lambda: read_prompts(paths.prompt_path, r.prompt_field, r.id_field, r.chat_format,
                                          r.params_field))
    rows = plan_rows(lr, prompts, tok.n_words, paths.prompt_path)
    state = scan_output(paths.out_path, prompts, rows.expect)  # every share's rows are checked against the file
    mine = [p for i, p in enumerate(prompts) if in_share(i, nodes.share)]  # a share's prompts, or all
    pending = [p for p in mine if rows.missing(p, state.rows)]
    hint = f" (recipe {lr.describe('max_seq_len')})"
    todo = prepare(pending, prompt_encoder(tok, r.chat_format, paths.prompt_path, lr.describe("chat_format")),
                   rows.max_prompt_len, r.on_long_prompt, paths.prompt_path, hint, r.chat_format)
    rows.fill(todo, state.rows)
    gpus, cuda_ok = gpu_facts if gpu_facts is not None else cuda_facts()
    shape = (ckpt.config, ckpt.vocab_rows, r.max_batch_size, r.max_seq_len, r.quantize)
    if nodes.multi:  # this node's processes; MP x DP over all nodes, the same answer on each
        local = local_processes(r.device, r.nproc, ckpt.mp, gpus, cuda_ok, nodes)
        dp = check_layout(ckpt.mp, local, nodes, lr.describe("nproc"))
        dev = choose_devices(r.device, r.dtype, local, ckpt.mp if local % ckpt.mp == 0 else 1, gpus, cuda_ok,
                             lr.describe("device"), paths.ckpt_dir, shape)
        dev = Devices(dev.device, ckpt.mp, dp, dev.dtype, dev.backend, dev.gpus)
    else:
        local = 0
        dev = choose_devices(r.device, r.dtype, r.nproc, ckpt.mp, gpus, cuda_ok, lr.describe("device"),
                             paths.ckpt_dir, shape, lr.describe("nproc") if "nproc" in lr.sources else None)
    engine = EngineConfig(max_seq_len=r.max_seq_len, max_batch_size=r.max_batch_size, dtype=dev.dtype,  # type: ignore[arg-type]
                          device=dev.device, temperature=r.temperature, top_p=r.top_p, seed=r.seed,  # type: ignore[arg-type]
                          quantize=r.quantize, fast=r.fast, graph_modes=rows.graph_modes(todo),
                          gpu_memory_utilization=r.gpu_memory_utilization,
                          kv_cache_dtype=r.kv_cache_dtype, batch_invariant=r.batch_invariant)
    mem, warn = memory_line(ckpt.config, ckpt.vocab_rows, dev, r.quantize, r.max_batch_size, r.max_seq_len,
                            paths.ckpt_dir, typical_length(todo, r.max_seq_len, r.max_gen_len), r.fast,
                            r.gpu_memory_utilization)
    notes = [warn] if warn else []
    space = space_note(paths.out_path, todo, r.max_gen_len)
    if space:
        notes.append(space)
    if state.torn_bytes:
        notes.append(f"the output's last line is torn ({state.torn_bytes} bytes, a killed run): it is cut off "
                     "and that prompt generated again")
    run_dir = paths.run_dir / (f"share-{nodes.share[0]:02d}of{nodes.share[1]:02d}" if nodes.share else "")
    launcher = f"{socket.gethostname()}-{os.getpid()}"
    work = f"work.{launcher}.jsonl" if nodes.multi else "work.jsonl"
    plan = Plan(mp=dev.mp, dp=dev.dp, device=dev.device, dtype=dev.dtype, backend=dev.backend,
                gpus=[describe_gpu(g) for g in dev.gpus], engine=asdict(engine), max_gen_len=r.max_gen_len,
                ckpt_dir=str(paths.ckpt_dir), tokenizer_path=str(Path(tok_path).resolve()),
                prompt_path=str(paths.prompt_path), out_path=str(paths.out_path),
                log_path=str(nodes.log_path(paths.log_path)),
                run_dir=str(run_dir), work_path=str(run_dir / work), total=rows.count(mine),
                pending=sum(len(t.samples) for t in todo if not t.skipped),
                already_done=rows.count(mine) - sum(len(rows.missing(p, state.rows)) for p in mine),
                long_prompts=sum(1 for t in todo if t.truncated or t.skipped),
                omp_threads=omp_threads(local or dev.nproc), master_port=free_port(), memory=mem, notes=notes,
                fingerprints=fingerprints(ckpt, Path(tok_path)), nodes=nodes.to_dict(), nproc_per_node=local,
                launcher=launcher, prompt_field=r.prompt_field, id_field=r.id_field, chat_format=r.chat_format,
                sampling=recipe_sampling(r), versions=versions(list(dev.gpus)))
    RunLock.check_free(run_dir, paths.out_path, nodes.lock_name)  # a live run's error first, not a settings mismatch
    check_same_settings(plan, run_dir / "plan.json", len(state.done))
    setup = Setup(lr, paths, ckpt, prompts, todo, plan, [], state.torn_bytes)
    setup.argv = torchrun_argv(plan, setup.plan_file)
    return setup

