"""`llamakit bench`: the benchmark workloads (standard: 128 prompts x 256 tokens; dataset: 1,024 prompts with their
own max_gen_len, batch from memory) on random weights of a preset shape, built directly on the device; reports
generated tok/s, batch-1 tok/s, time to first token, peak memory and sequences held at once."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import math
import os
import random
import re
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from llamakit.checkpoint.layout import expected_shapes
from llamakit.checkpoint.params import PRESETS, ModelConfig, load_params
from llamakit.distributed import finish_and_exit, free_port, init_model_parallel
from llamakit.lifeline import child_env, die_with_parent, guarded
from llamakit.engine.api import EngineConfig, Request, SamplingParams
from llamakit.engine.engine import DTYPES, BatchEngine, cap_gpu_memory, engine_for_model
from llamakit.errors import LlamakitError
from llamakit.fit import resolve_dtype
from llamakit.model.kv_cache import KV_CACHE_DTYPES, KVCache
from llamakit.model.llama import Transformer

# Shapes for bench presets: the published ones plus a CPU-sized one for CI.
BENCH_PRESETS: dict[str, ModelConfig] = {
    "7b": PRESETS["llama-7b"], "13b": PRESETS["llama-13b"], "30b": PRESETS["llama-30b"],
    "65b": PRESETS["llama-65b"], "70b": PRESETS["llama2-70b"],
    # Llama 3 8B: 128256-token vocabulary (the output layer and sampling over 4x the rows of LLaMA's), 8 kv heads
    "llama3-8b": PRESETS["llama3-8b"],
    "tiny": ModelConfig(dim=256, n_layers=4, n_heads=8, multiple_of=64, norm_eps=1e-6),
    # the CPU stand-in for llama3-8b: a tiny body with Llama 3's real vocabulary, scaled rope, GQA
    "tiny-llama3": ModelConfig(dim=256, n_layers=2, n_heads=8, n_kv_heads=4, multiple_of=64, norm_eps=1e-5,
                               rope_theta=500000.0, use_scaled_rope=True, vocab_size=128256),
}
VOCAB = 32000  # LLaMA-1/2; a preset that names its vocabulary (Llama 3: 128256) uses its own
CPU_STAND_INS = {"7b": "tiny", "llama3-8b": "tiny-llama3"}  # a full shape on CPU would take hours


def bench_vocab(cfg: ModelConfig) -> int:
    """Rows of the embedding and output layer for a bench shape."""
    return cfg.vocab_size if cfg.vocab_size > 0 else VOCAB


@dataclass
class BenchOptions:
    preset: str = "7b"
    params_json: str | None = None
    mp: int = 1
    dp: int = 1  # data-parallel replicas (world = mp x dp), each takes every dp-th prompt
    dtype: str = "auto"
    device: str = "auto"
    workload: str = "standard"  # standard | dataset (llamakit.bench.WORKLOADS)
    prompts: int = 0  # 0: the workload's own (128 / 1,024)
    gen_len: int = 256  # standard workload; dataset draws max_gen_len per prompt
    max_prompt_len: int = 480
    batch: int = 0  # upper limit of sequences decoded together; 0: the workload's (128 / what memory holds)
    batch1_prompts: int = 4
    temperature: float = 0.6
    top_p: float = 0.9
    quantize: str = "none"
    kv_cache_dtype: str = "auto"  # auto | fp8 (vLLM's key)
    batch_invariant: bool = False  # each sequence's logits independent of the batch, bit for bit (EngineConfig)
    fast: bool = True
    gpu_memory_utilization: float = 1.0  # fraction of each GPU's memory a process may use (vLLM's name)
    # decoding controls by their recipe names (`--set top_k=50 --set n=4 ...`); n multiplies the sequences
    sampling: dict = field(default_factory=dict)


@dataclass
class BenchResult:
    preset: str
    device: str
    torch: str
    dtype: str
    mp: int
    quantize: str
    prompts: int
    gen_len: int
    batch: int
    generated_tokens: int
    seconds: float
    tokens_per_s: float
    batch1_tokens_per_s: float
    ttft_ms: float
    peak_gpu_mem_gib: float | None
    build_s: float
    date: str
    # int8 quality, same random weights and prompts, fp32 logits as the reference: ||x - fp32|| / ||fp32||,
    # for the 16-bit model (the noise floor of the dtype itself) and the int8 one, and top-1 agreement with fp32
    bf16_logit_rel_err: float | None = None
    int8_logit_rel_err: float | None = None
    bf16_top1_agreement: float | None = None
    int8_top1_agreement: float | None = None
    dp: int = 1
    workload: str = "standard"
    peak_sequences: int | None = None  # sequences held in the KV cache at once (largest decode batch)
    peak_kv_tokens: int | None = None  # tokens they held
    kv_cache_tokens: int | None = None  # what the paged cache holds in all
    preemptions: int | None = None  # sequences preempted (recomputed later) when the cache ran out of blocks
    sampling: dict = field(default_factory=dict)
    gpu_memory_utilization: float = 1.0
    kv_cache_dtype: str = "auto"
    batch_invariant: bool = False
    timeline: dict = field(default_factory=dict)  # engine.Timeline of the timed run: prefill / decode / waiting
    batch1_timeline: dict = field(default_factory=dict)  # the same, summed over the batch-1 runs


def lognormal_token_lists(n: int, median: float, sigma: float, min_len: int, max_len: int, vocab: int,
                          seed: int) -> list[list[int]]:
    """n lists of token ids: length max(min_len, min(max_len, int(lognormvariate(log median, sigma)))), ids uniform in
    [3, vocab), all drawn from one random.Random(seed) stream, list by list (length, then its ids)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = max(min_len, min(max_len, int(rng.lognormvariate(math.log(median), sigma))))
        out.append([rng.randrange(3, vocab) for _ in range(length)])
    return out


def standard_prompts(n: int, max_len: int = 480, vocab: int = VOCAB, seed: int = 0) -> list[list[int]]:
    """The benchmark's prompts: lengths lognormal around 120 (sigma 0.6), 8..max_len (lognormal_token_lists)."""
    return lognormal_token_lists(n, 120, 0.6, 8, max_len, vocab, seed)


WORKLOADS = ("standard", "dataset")
DATASET_PROMPTS = 1024
STANDARD_BATCH = 128


def dataset_gen_lens(n: int, seed: int = 1) -> list[int]:
    """The dataset workload's max_gen_len per prompt: max(16, min(512, int(lognormvariate(log 200, 0.5)))), from
    its own random.Random(seed) stream."""
    rng = random.Random(seed)
    return [max(16, min(512, int(rng.lognormvariate(math.log(200), 0.5)))) for _ in range(n)]


def workload(opts: BenchOptions, vocab: int = VOCAB) -> tuple[list[list[int]], list[int]]:
    """Prompts and max_gen_len per prompt of the chosen workload (ids below the vocabulary: the same prompts for
    every preset; a smaller vocabulary, e.g. a checkpoint's params.json, draws its own)."""
    prompts = standard_prompts(opts.prompts, opts.max_prompt_len, min(vocab, VOCAB))
    if opts.workload == "dataset":
        return prompts, dataset_gen_lens(len(prompts))
    return prompts, [opts.gen_len] * len(prompts)


def random_shard(cfg: ModelConfig, vocab: int, mp: int, dtype: torch.dtype, device: torch.device,
                 seed: int) -> dict[str, torch.Tensor]:
    """This rank's weights, random normal(0, 0.02) (norms 1.0), generated on the device: no file, no copy."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shard = {}
    for key, shape in expected_shapes(cfg, vocab, mp).items():
        if key.endswith("norm.weight"):
            shard[key] = torch.ones(shape, dtype=dtype, device=device)
        else:
            shard[key] = torch.empty(shape, dtype=dtype, device=device).normal_(0.0, 0.02, generator=gen)
    return shard


def _engine(model: Transformer, ecfg: EngineConfig, rows: int) -> BatchEngine:
    return engine_for_model(model, ecfg, rows, eos_ids=())  # the benchmark ignores EOS


def sampling_params(opts: BenchOptions) -> tuple[SamplingParams, int]:
    """The workload's decoding settings (temperature/top_p from their options, the rest from `sampling`) and n."""
    kw = {k: v for k, v in opts.sampling.items() if k != "n"}
    for key in ("stop", "stop_token_ids"):
        if key in kw:
            kw[key] = tuple([kw[key]] if isinstance(kw[key], str) else kw[key])
    return SamplingParams(**{"temperature": opts.temperature, "top_p": opts.top_p, **kw}), int(
        opts.sampling.get("n", 1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_bench(opts: BenchOptions, rank: int = 0) -> BenchResult:
    """Build the model on this rank and run the workload (call after the process group is initialised)."""
    from fairscale.nn.model_parallel.initialize import get_model_parallel_rank

    device = torch.device("cuda", torch.cuda.current_device()) if opts.device == "cuda" else torch.device("cpu")
    cfg = (load_params(Path(opts.params_json).parent) if opts.params_json else BENCH_PRESETS[opts.preset])
    vocab = bench_vocab(cfg)
    cfg = cfg.with_vocab(vocab)
    prompts, gen_lens = workload(opts, vocab)
    max_seq_len = max(len(p) for p in prompts) + max(gen_lens)
    dtype = DTYPES[opts.dtype]
    params, n = sampling_params(opts)
    mode = "full" if params.needs_processors or params.min_tokens else "sample" if params.temperature > 0 else "greedy"
    rows = min(opts.batch, len(prompts) * n)
    ecfg = EngineConfig(max_seq_len=max_seq_len, max_batch_size=rows, dtype=opts.dtype,  # type: ignore[arg-type]
                        device=device.type, temperature=opts.temperature, top_p=opts.top_p,  # type: ignore[arg-type]
                        quantize=opts.quantize, fast=opts.fast, graph_modes=(mode,),  # type: ignore[arg-type]
                        gpu_memory_utilization=opts.gpu_memory_utilization,
                        kv_cache_dtype=opts.kv_cache_dtype,  # type: ignore[arg-type]
                        batch_invariant=opts.batch_invariant)
    cap_gpu_memory(opts.gpu_memory_utilization, device)  # before any weights: they count against the cap
    seed = 1234 + get_model_parallel_rank()
    quality: tuple = (None, None, None, None)
    if opts.quantize == "int8":
        quality = int8_quality(cfg, opts.mp, dtype, device, seed, prompts[:4])
    t0 = time.perf_counter()
    model = Transformer.from_shard(cfg, random_shard(cfg, vocab, opts.mp, dtype, device, seed),
                                   max_seq_len, dtype, device, opts.quantize, vocab_parallel=cfg.llama3_family)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    engine = _engine(model, ecfg, rows)
    # warm-up (kernels compiled/autotuned, graphs captured at engine build) - excluded from the timing
    list(engine.generate([Request(10_000 + i, p[:32], 8, params=params)
                          for i, p in enumerate(prompts[: min(8, len(prompts))])]))
    _sync(device)
    build_s = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()

    dp_rank, dp = _data_parallel()
    reqs = [Request(i, p, g, params=params, sample=s) for i, (p, g) in enumerate(zip(prompts, gen_lens))
            if i % dp == dp_rank for s in range(n)]
    _sync(device)
    _barrier(dp)
    t1 = time.perf_counter()
    generated = sum(len(c.tokens) for c in engine.generate(reqs))
    _sync(device)
    seconds = time.perf_counter() - t1
    generated, seconds = _combine_replicas(generated, seconds, dp, device)

    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None  # before the batch-1 engine
    sched = engine.last
    held = (sched.peak_running, sched.peak_tokens, sched.preemptions) if sched else (None, None, None)
    timeline = engine.timeline.as_dict()
    kv_tokens = (engine.runner.cache.n_blocks - 1) * engine.runner.cache.block_size
    del engine, sched
    if device.type == "cuda":
        torch.cuda.empty_cache()
    single = _engine(model, ecfg, 1)
    list(single.generate([Request(20_000, prompts[0][:16], 4, params=params)]))  # warm-up for the batch-1 graph
    b1_tokens, b1_time, ttft, b1_timeline = 0, 0.0, [], Counter()
    for i, p in enumerate(prompts[: opts.batch1_prompts]):
        _sync(device)
        t = time.perf_counter()
        list(single.generate([Request(30_000 + i, p, 1, params=params)]))
        _sync(device)
        ttft.append(time.perf_counter() - t)
        t = time.perf_counter()
        b1_tokens += sum(len(c.tokens) for c in single.generate([Request(i, p, opts.gen_len, params=params)]))
        _sync(device)
        b1_time += time.perf_counter() - t
        b1_timeline.update(single.timeline.as_dict())
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    return BenchResult(
        preset=opts.preset if not opts.params_json else str(opts.params_json), device=name,
        torch=torch.__version__, dtype=opts.dtype, mp=opts.mp, quantize=opts.quantize, prompts=len(prompts),
        gen_len=opts.gen_len if opts.workload == "standard" else max(gen_lens), batch=rows,
        generated_tokens=generated, seconds=round(seconds, 3),
        tokens_per_s=round(generated / seconds, 1), batch1_tokens_per_s=round(b1_tokens / b1_time, 1),
        ttft_ms=round(1000 * sum(ttft) / len(ttft), 1), peak_gpu_mem_gib=round(peak, 2) if peak else None,
        build_s=round(build_s, 1), date=_dt.date.today().isoformat(),
        bf16_logit_rel_err=quality[0], int8_logit_rel_err=quality[1], bf16_top1_agreement=quality[2],
        int8_top1_agreement=quality[3], dp=dp, workload=opts.workload, peak_sequences=held[0],
        peak_kv_tokens=held[1], kv_cache_tokens=kv_tokens, preemptions=held[2], sampling=opts.sampling,
        gpu_memory_utilization=opts.gpu_memory_utilization, kv_cache_dtype=opts.kv_cache_dtype,
        batch_invariant=opts.batch_invariant, timeline=timeline,
        batch1_timeline={k: round(v, 3) for k, v in b1_timeline.items()})


def _data_parallel() -> tuple[int, int]:
    """(replica index, number of replicas) from fairscale's data-parallel groups."""
    from fairscale.nn.model_parallel.initialize import get_data_parallel_rank, get_data_parallel_world_size

    return get_data_parallel_rank(), get_data_parallel_world_size()


def _barrier(dp: int) -> None:
    if dp > 1:
        torch.distributed.barrier()  # replicas start the clock together


def _combine_replicas(generated: int, seconds: float, dp: int, device: torch.device) -> tuple[int, float]:
    """Whole-file figures over all replicas: tokens summed (one model-parallel rank per replica), wall time of
    the slowest replica."""
    if dp == 1:
        return generated, seconds
    from fairscale.nn.model_parallel.initialize import get_model_parallel_rank

    t = torch.tensor([generated if get_model_parallel_rank() == 0 else 0], dtype=torch.float64, device=device)
    w = torch.tensor([seconds], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    torch.distributed.all_reduce(w, op=torch.distributed.ReduceOp.MAX)
    return int(t.item()), float(w.item())


def _logits_all_positions(model: Transformer, prompts: list[list[int]]) -> torch.Tensor:
    """Logits at every position of each prompt (prefill into a scratch cache), concatenated [sum(T), V]."""
    out = []
    for p in prompts:
        bs = 16
        cache = KVCache(model.cfg.n_layers, 1 + -(-len(p) // bs), bs, model.layers[0].attention.n_kv,
                        model.cfg.head_dim, model.dtype, model.device)
        table = torch.arange(1, cache.n_blocks, dtype=torch.int32, device=model.device)[None]
        tokens = torch.tensor([p], device=model.device)
        for t in range(1, len(p) + 1):  # logits of prefix t (the prefill API returns the last position only)
            if t % max(1, len(p) // 8) == 0 or t == len(p):
                out.append(model.prefill(tokens[:, :t], torch.tensor([t], device=model.device), table, cache))
    return torch.cat(out)


QUALITY_LAYERS = 4  # the int8 check's depth: a full fp32 copy of a 65B rank's weights (130 GB) fits no GPU


def int8_quality(cfg: ModelConfig, mp: int, dtype: torch.dtype, device: torch.device, seed: int,
                 prompts: list[list[int]]) -> tuple[float, float, float, float]:
    """Logits of the same random weights in fp32 (reference), in `dtype`, and in int8 (compute in `dtype`), on the
    first QUALITY_LAYERS layers of the shape (embeddings and output layer included)."""
    cfg = dataclasses.replace(cfg, n_layers=min(cfg.n_layers, QUALITY_LAYERS))

    def logits(compute: torch.dtype, quantize: str) -> torch.Tensor:
        # weights drawn in `dtype` for all three, so only the arithmetic differs
        shard = {k: v.to(compute) for k, v in random_shard(cfg, cfg.vocab_size, mp, dtype, device, seed).items()}
        model = Transformer.from_shard(cfg, shard, 1024, compute, device, quantize, vocab_parallel=cfg.llama3_family)
        del shard
        out = _logits_all_positions(model, prompts).float()
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()
        return out

    ref = logits(torch.float32, "none")
    half = logits(dtype, "none")
    q8 = logits(dtype, "int8")

    def rel(x: torch.Tensor) -> float:
        return round(((x - ref).norm() / ref.norm()).item(), 5)

    def top1(x: torch.Tensor) -> float:
        return round((x.argmax(-1) == ref.argmax(-1)).float().mean().item(), 4)

    return rel(half), rel(q8), top1(half), top1(q8)


def resolve(opts: BenchOptions) -> BenchOptions:
    """Fill auto device/dtype, check the preset and MP, scale the CPU workload down to seconds."""
    if opts.preset not in BENCH_PRESETS and not opts.params_json:
        raise LlamakitError(f"unknown preset {opts.preset!r}", f"use one of: {', '.join(BENCH_PRESETS)}")
    if opts.params_json and not Path(opts.params_json).is_file():
        raise LlamakitError("params.json not found", "pass a checkpoint's params.json", Path(opts.params_json).resolve())
    device = opts.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise LlamakitError("--device cuda but torch sees no GPU", "run `llamakit doctor` to see why")
    ccs = ([torch.cuda.get_device_capability(i) for i in range(min(opts.mp * opts.dp, torch.cuda.device_count()))]
           if device == "cuda" else [])
    dtype = resolve_dtype(opts.dtype, device, ccs)
    if opts.dp < 1 or opts.mp < 1:
        raise LlamakitError("--mp and --dp must be at least 1", "e.g. --mp 2 --dp 1")
    if device == "cuda" and opts.mp * opts.dp > torch.cuda.device_count():
        raise LlamakitError(f"--mp {opts.mp} x --dp {opts.dp} needs {opts.mp * opts.dp} GPUs, "
                            f"{torch.cuda.device_count()} visible",
                            "lower --mp or make more GPUs visible (CUDA_VISIBLE_DEVICES)")
    cfg = BENCH_PRESETS.get(opts.preset) if not opts.params_json else load_params(Path(opts.params_json).parent)
    if cfg is not None and opts.mp not in cfg.allowed_mp(bench_vocab(cfg)):
        raise LlamakitError(f"--mp {opts.mp} does not divide this shape",
                            f"use one of {cfg.allowed_mp(bench_vocab(cfg))[:8]}")
    if not 0 < opts.gpu_memory_utilization <= 1:
        raise LlamakitError(f"--gpu-memory-utilization {opts.gpu_memory_utilization} is not a fraction",
                            "use a number > 0 and <= 1, e.g. 0.34 for 48 GB of a 141 GB H200")
    if opts.kv_cache_dtype not in KV_CACHE_DTYPES:
        raise LlamakitError(f"--kv-cache-dtype {opts.kv_cache_dtype!r} is not one of {', '.join(KV_CACHE_DTYPES)}",
                            "use auto (the model's dtype) or fp8 (twice the tokens, half the bytes read)")
    if opts.workload not in WORKLOADS:
        raise LlamakitError(f"unknown workload {opts.workload!r}", f"use one of: {', '.join(WORKLOADS)}")
    prompts = opts.prompts or (DATASET_PROMPTS if opts.workload == "dataset" else STANDARD_BATCH)
    batch = opts.batch or (prompts if opts.workload == "dataset" else STANDARD_BATCH)  # dataset: memory decides
    new = BenchOptions(**{**asdict(opts), "device": device, "dtype": dtype, "prompts": prompts, "batch": batch})
    if device == "cpu" and opts.preset in CPU_STAND_INS and not opts.params_json:
        # a 7B / 8B shape on CPU would take hours: the CPU bench is a smoke test of the same code path
        new.preset, new.prompts, new.gen_len, new.max_prompt_len, new.batch, new.batch1_prompts = \
            CPU_STAND_INS[opts.preset], 8, 16, 64, 8, 2
    return new


def bench(opts: BenchOptions) -> BenchResult:
    """Run the benchmark: in this process at MP=1, through torchrun (one process per GPU) at MP>1."""
    opts = resolve(opts)
    if opts.mp * opts.dp == 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if opts.device == "cuda" else "gloo"
            dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
        init_model_parallel(1)
        return _one_line_errors(run_bench, opts)
    out = Path(os.environ.get("TMPDIR", "/tmp")) / f"llamakit-bench-{os.getpid()}.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={opts.mp * opts.dp}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "llamakit.bench", json.dumps(asdict(opts)), str(out)]
    proc = subprocess.run(guarded(cmd), env=child_env(), capture_output=True, text=True)  # ends with bench
    if proc.returncode != 0 or not out.exists():
        raise worker_error(proc.stderr or proc.stdout)
    result = BenchResult(**json.loads(out.read_text()))
    out.unlink()
    return result


WORKER_ERROR = "llamakit bench worker error: "


def _one_line_errors(fn, opts: BenchOptions) -> BenchResult:
    """Run `fn(opts)`, turning running out of GPU memory into one line with the batch to use instead."""
    try:
        return fn(opts)
    except torch.OutOfMemoryError as e:
        if opts.batch <= 1:
            raise LlamakitError("out of GPU memory at batch 1 (the weights and one sequence do not fit)",
                                "use --quantize int8 or a higher --mp") from e
        asked = re.search(r"Tried to allocate [\d.]+ [KMG]iB", str(e))
        raise LlamakitError(f"out of GPU memory at --batch {opts.batch}" + (f" ({asked.group(0)})" if asked else ""),
                            f"use --batch {opts.batch // 2}") from e


def worker_error(output: str) -> LlamakitError:
    """The one line for failed benchmark workers: a worker's own error line if one printed it, else the last
    exception line of a traceback (not torchrun's '====' banner), else the last line."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    own = [ln.split(WORKER_ERROR, 1)[1] for ln in lines if WORKER_ERROR in ln]
    if own:
        what, _, fix = own[-1].partition(". Fix: ")
        return LlamakitError(what, fix)
    exc = [ln for ln in lines if re.match(r"^(\[rank\d+\]:\s*)?[\w.]*(Error|Exception|Interrupt)\b", ln)
           and "ChildFailedError" not in ln]  # torchrun's own summary, not the worker's error
    last = (exc or [ln for ln in lines if not set(ln) <= set("=-")] or ["no output"])[-1]
    return LlamakitError(f"benchmark workers failed: {last[:300]}", "rerun with --debug or check `llamakit doctor`")


def _worker_main() -> None:
    """torchrun entry for MP>1: every rank builds its part; rank 0 writes the result file."""
    import torch.distributed as dist

    die_with_parent()  # a rank ends with torchrun, torchrun with bench

    opts = BenchOptions(**json.loads(sys.argv[1]))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if opts.device == "cuda":
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if opts.device == "cuda" else "gloo")
    init_model_parallel(opts.mp)
    try:
        result = _one_line_errors(run_bench, opts)
    except LlamakitError as e:
        print(f"{WORKER_ERROR}{e.one_line()}", file=sys.stderr, flush=True)
        finish_and_exit(1, opts.device)
    if dist.get_rank() == 0:
        Path(sys.argv[2]).write_text(json.dumps(asdict(result)))
    finish_and_exit(0, opts.device)


if __name__ == "__main__":
    _worker_main()
