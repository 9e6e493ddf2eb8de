"""`llamakit bench`: run the standard generation benchmark and print (or --json) the figures."""

from __future__ import annotations

import json
from dataclasses import asdict

import typer
from rich.table import Table

from llamakit.cli.app import app, console

PRESET_NAMES = "7b, 13b, 30b, 65b, 70b, llama3-8b, tiny, tiny-llama3"  # llamakit.bench.BENCH_PRESETS, without importing torch for --help


@app.command("bench")
def bench_cmd(
    preset: str = typer.Option("7b", "--preset", help=f"Model shape: {PRESET_NAMES}."),
    params_json: str = typer.Option(None, "--params", help="Use this checkpoint's params.json shape instead."),
    mp: int = typer.Option(1, "--mp", help="Model-parallel size (one process per GPU)."),
    dp: int = typer.Option(1, "--dp", help="Data-parallel replicas (MP x DP processes; prompts split between them)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto, bf16, fp16 or fp32."),
    device: str = typer.Option("auto", "--device", help="auto, cuda or cpu (cpu runs a tiny shape)."),
    workload: str = typer.Option("standard", "--workload",
                                 help="standard (128 prompts x 256 tokens, batch 128), dataset (1,024 prompts, "
                                      "max_gen_len drawn per prompt, batch from memory) or score (1,000 texts of "
                                      "~300 tokens: per-token logprob, rank, entropy; --batch texts per forward)."),
    texts: int = typer.Option(1000, "--texts", help="Texts in the score workload."),
    prompts: int = typer.Option(0, "--prompts", help="Prompts in the workload (0: the workload's own)."),
    gen_len: int = typer.Option(256, "--gen-len", help="New tokens per prompt, standard workload (EOS ignored)."),
    batch: int = typer.Option(0, "--batch", help="Upper limit of sequences decoded together (0: the workload's; "
                                                 "free KV-cache blocks decide how many run); score: texts per forward."),
    quantize: str = typer.Option("none", "--quantize", help="none or int8 (weight-only)."),
    kv_cache_dtype: str = typer.Option("auto", "--kv-cache-dtype", help="KV cache: auto (the model's dtype) or fp8 "
                                       "(e4m3: twice the tokens held, half the bytes a decode step reads; vLLM's "
                                       "name)."),
    batch_invariant: bool = typer.Option(False, "--batch-invariant", help="Each sequence's tokens and logprobs "
                                         "independent of the batch, bit for bit (recipe key batch_invariant)."),
    gpu_memory_utilization: float = typer.Option(
        1.0, "--gpu-memory-utilization", help="Fraction of each GPU's total memory a process may use (vLLM's name): "
        "0.34 makes a 141 GB H200 behave like a 48 GB RTX A6000."),
    plain: bool = typer.Option(False, "--plain", help="Plain path: no CUDA graphs or fused kernels."),
    sets: list[str] = typer.Option([], "--set", help="Decoding control by its recipe name, repeatable: "
                                   "--set top_k=50 --set repetition_penalty=1.2 --set n=4 --set logprobs=5 "
                                   "(n multiplies the sequences; temperature/top_p: --set too)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Benchmark workload on random weights: generated tok/s, batch-1 tok/s, time to first token, peak memory,
    sequences held at once (score: texts/s and scored tokens/s)."""
    if workload == "score":
        _score(preset, device, dtype, texts, batch or 64, as_json)
        return
    from llamakit.bench import BenchOptions, bench
    from llamakit.run.decoding import parse_sampling

    sampling = parse_sampling(sets)
    temps = {k: sampling.pop(k) for k in ("temperature", "top_p") if k in sampling}
    opts = BenchOptions(preset=preset, params_json=params_json, mp=mp, dp=dp, dtype=dtype, device=device,
                        workload=workload, prompts=prompts, gen_len=gen_len, batch=batch, quantize=quantize,
                        fast=not plain, sampling=sampling, gpu_memory_utilization=gpu_memory_utilization,
                        kv_cache_dtype=kv_cache_dtype, batch_invariant=batch_invariant, **temps)
    result = bench(opts)
    if as_json:
        print(json.dumps(asdict(result)))
        return
    table = Table(title=f"llamakit bench: {result.preset} on {result.device}", show_header=False)
    for key, value in asdict(result).items():
        table.add_row(key, str(value))
    console.print(table)


def _score(preset: str, device: str, dtype: str, texts: int, batch: int, as_json: bool) -> None:
    """The score workload (llamakit.score.bench): texts/s and scored tokens/s over the whole file."""
    from llamakit.score.bench import score_bench

    result = score_bench(preset, device, dtype, texts, batch)
    if as_json:
        print(json.dumps(asdict(result)))
        return
    table = Table(title=f"llamakit bench --workload score: {result.preset} on {result.device}", show_header=False)
    for key, value in asdict(result).items():
        table.add_row(key, str(value))
    console.print(table)
