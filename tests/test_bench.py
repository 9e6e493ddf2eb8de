"""`llamakit bench`: the standard workload is the documented one, and the command runs end to end on CPU
(a tiny shape) at MP 1 in-process and at MP 2 through torchrun + gloo."""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import pytest

from llamakit.bench import BenchOptions, bench, resolve, standard_prompts
from llamakit.errors import LlamakitError

ROOT = Path(__file__).resolve().parents[1]


def test_standard_prompts_follow_the_benchmark_definition():
    prompts = standard_prompts(128)
    assert len(prompts) == 128 and prompts == standard_prompts(128)  # deterministic
    rng = random.Random(0)  # the definition, written out independently
    for p in prompts[:5]:
        length = max(8, min(480, int(rng.lognormvariate(math.log(120), 0.6))))
        assert p == [rng.randrange(3, 32000) for _ in range(length)]
    lengths = [len(p) for p in prompts]
    assert min(lengths) >= 8 and max(lengths) <= 480 and 90 < sorted(lengths)[64] < 150
    assert all(3 <= t < 32000 for p in prompts for t in p)


def test_cpu_runs_a_tiny_shape_and_counts_every_token(mp1_group):
    result = bench(BenchOptions(device="cpu", prompts=6, gen_len=5, batch=4, batch1_prompts=1, preset="tiny",
                                max_prompt_len=40))
    assert result.device == "cpu" and result.dtype == "fp32" and result.mp == 1
    assert result.generated_tokens == 6 * 5  # EOS is ignored: every prompt generates gen_len tokens
    assert result.tokens_per_s > 0 and result.batch1_tokens_per_s > 0 and result.ttft_ms > 0


def test_llama3_8b_preset_runs_its_cpu_stand_in_with_the_128k_vocabulary(mp1_group):
    from llamakit.bench import BENCH_PRESETS, resolve

    assert BENCH_PRESETS["llama3-8b"].param_count() == 8_030_261_248
    opts = resolve(BenchOptions(device="cpu", preset="llama3-8b"))
    assert opts.preset == "tiny-llama3" and BENCH_PRESETS["tiny-llama3"].vocab_size == 128256
    result = bench(BenchOptions(device="cpu", prompts=2, gen_len=3, batch=2, batch1_prompts=1, preset="tiny-llama3",
                                max_prompt_len=16))
    assert result.generated_tokens == 2 * 3 and result.tokens_per_s > 0


def test_bad_options_are_one_line_errors():
    with pytest.raises(LlamakitError, match="unknown preset"):
        resolve(BenchOptions(preset="3b", device="cpu"))
    with pytest.raises(LlamakitError, match="does not divide"):
        resolve(BenchOptions(preset="tiny", device="cpu", mp=3))
    with pytest.raises(LlamakitError, match="--gpu-memory-utilization 1.5 is not a fraction"):
        resolve(BenchOptions(preset="tiny", device="cpu", gpu_memory_utilization=1.5))
    with pytest.raises(LlamakitError, match="--kv-cache-dtype 'int4' is not one of auto, fp8, fp8_e4m3"):
        resolve(BenchOptions(preset="tiny", device="cpu", kv_cache_dtype="int4"))


@pytest.mark.parametrize("flag,n,expected,kv", [("--mp", 2, 16, "auto"), ("--dp", 2, 16, "auto"),
                                                ("--mp", 2, 16, "fp8")])
def test_cli_json_with_two_processes_counts_every_prompt_once(flag, n, expected, kv):
    """MP=2 splits the model across two ranks (each rank's fp8 cache holding its own kv heads); DP=2 splits the
    prompts between two replicas."""
    proc = subprocess.run([sys.executable, "-m", "llamakit", "bench", "--device", "cpu", "--preset", "tiny", flag,
                           str(n), "--prompts", "4", "--gen-len", "4", "--batch", "4", "--kv-cache-dtype", kv,
                           "--json"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result[flag[2:]] == n and result["generated_tokens"] == expected  # 4 prompts x 4 tokens, once each
    assert result["kv_cache_dtype"] == kv


def test_dataset_workload_draws_max_gen_len_per_prompt_from_its_own_stream():
    from llamakit.bench import dataset_gen_lens

    lens = dataset_gen_lens(1024)
    rng = random.Random(1)
    assert lens[:5] == [max(16, min(512, int(rng.lognormvariate(math.log(200), 0.5)))) for _ in range(5)]
    assert min(lens) >= 16 and max(lens) <= 512 and 170 < sorted(lens)[512] < 230


def test_cpu_dataset_workload_generates_every_prompts_own_length(mp1_group):
    from llamakit.bench import dataset_gen_lens

    result = bench(BenchOptions(device="cpu", preset="tiny", workload="dataset", prompts=5, batch1_prompts=1,
                                gen_len=4, max_prompt_len=40))
    assert result.workload == "dataset" and result.batch == 5  # batch 0: every prompt may run; memory decides
    assert result.generated_tokens == sum(dataset_gen_lens(5))
    assert result.peak_sequences == 5 and result.kv_cache_tokens >= result.peak_kv_tokens > 0
    tl = result.timeline  # where the time went: launches with the GPU idle apart from steps chained behind one
    assert tl["steps"] > tl["launches"] > 0 and tl["chain_s"] > 0 and tl["launch_s"] > 0
    parts = tl["prefill_s"] + tl["wait_s"] + tl["launch_s"] + tl["chain_s"] + tl["record_s"]
    assert parts <= tl["total_s"] + 0.01


def test_failed_workers_report_the_real_error_not_torchruns_banner():
    from llamakit.bench import WORKER_ERROR, worker_error

    traceback_out = "\n".join([
        "Traceback (most recent call last):", '  File "bench.py", line 1, in <module>',
        "[rank1]: torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 130.00 GiB.",
        "E1130 worker failed", "=" * 40, "torch.distributed.elastic.multiprocessing.errors.ChildFailedError:",
        "=" * 40])
    assert "torch.OutOfMemoryError: CUDA out of memory" in worker_error(traceback_out).what
    own = worker_error(f"noise\n{WORKER_ERROR}out of GPU memory at --batch 512. Fix: use --batch 256\n" + "=" * 20)
    assert own.what == "out of GPU memory at --batch 512" and own.fix == "use --batch 256"


def test_bench_runs_with_decoding_controls_on(mp1_group):
    """The device measurement of issue 15 (top_k 50, repetition_penalty 1.2, n 4, logprobs 5) runs through the same
    code on CPU: n multiplies the sequences, every token is counted."""
    from llamakit.run.decoding import parse_sampling

    sampling = parse_sampling(["top_k=50", "repetition_penalty=1.2", "n=4", "logprobs=5"])
    assert sampling == {"top_k": 50, "repetition_penalty": 1.2, "n": 4, "logprobs": 5}
    result = bench(BenchOptions(device="cpu", prompts=3, gen_len=4, batch=8, batch1_prompts=1, preset="tiny",
                                max_prompt_len=40, sampling=sampling))
    assert result.generated_tokens == 3 * 4 * 4 and result.sampling["n"] == 4
    with pytest.raises(LlamakitError, match="not a decoding key"):
        parse_sampling(["top_q=3"])
    with pytest.raises(LlamakitError, match="top_k"):
        parse_sampling(["top_k=-2"])
