"""The plan: MP x DP, devices, dtype and backend from the GPUs; everything is checked before any process starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamakit.checkpoint.params import PRESETS
from llamakit.checkpoint.tiny import train_tokenizer
from llamakit.errors import LlamakitError
from llamakit.gpus import GpuInfo
from llamakit.run.capacity import memory_line
from llamakit.run.plan import Devices, choose_devices, plan_run, torchrun_argv

GiB = 1024**3
REPO = Path(__file__).resolve().parents[1]


def a6000(i: int) -> GpuInfo:
    return GpuInfo(i, "NVIDIA RTX A6000", 48 * GiB, 47 * GiB, (8, 6))


def v100(i: int) -> GpuInfo:
    return GpuInfo(i, "Tesla V100-SXM2-32GB", 32 * GiB, 31 * GiB, (7, 0))


# ---------------------------------------------------------------- pure rules


def test_cpu_when_no_gpu_one_replica_gloo_fp32():
    d = choose_devices("auto", "auto", "auto", 2, [], False)
    assert (d.device, d.mp, d.dp, d.nproc, d.dtype, d.backend) == ("cpu", 2, 1, 2, "fp32", "gloo")
    assert choose_devices("cpu", "bf16", 4, 2, [a6000(0)], True).dp == 2  # nproc asks for 2 CPU replicas


def test_two_a6000_run_13b_as_one_model_parallel_pair_in_bf16_over_nccl():
    d = choose_devices("auto", "auto", "auto", 2, [a6000(0), a6000(1)], True)
    assert (d.device, d.mp, d.dp, d.dtype, d.backend) == ("cuda", 2, 1, "bf16", "nccl")


def test_spare_gpus_become_data_parallel_replicas():
    gpus = [a6000(i) for i in range(5)]
    assert choose_devices("auto", "auto", "auto", 2, gpus, True).dp == 2  # 5 // 2
    assert choose_devices("auto", "auto", "auto", 1, gpus, True).dp == 5
    assert choose_devices("cuda", "auto", 2, 1, gpus, True).dp == 2  # nproc caps it


def test_fewer_gpus_than_mp_stops_with_the_fix(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with pytest.raises(LlamakitError) as e:
        choose_devices("auto", "auto", "auto", 2, [a6000(1)], True)
    assert "MP=2" in e.value.what and "1 is visible (CUDA_VISIBLE_DEVICES=1)" in e.value.what
    assert "`llamakit reshard CKPT_DIR CKPT_DIR-mp1 --mp 1`" in e.value.fix
    with pytest.raises(LlamakitError) as e:  # 65B (MP=8) on 3 GPUs: the largest divisor of 8 that fits is 2
        choose_devices("auto", "auto", "auto", 8, [a6000(0), a6000(1), a6000(2)], True, ckpt_dir="/data/LLaMA/65B")
    assert "`llamakit reshard /data/LLaMA/65B /data/LLaMA/65B-mp2 --mp 2`" in e.value.fix


def test_older_gpus_get_fp16_and_refuse_bf16():
    assert choose_devices("auto", "auto", "auto", 1, [v100(0)], True).dtype == "fp16"
    with pytest.raises(LlamakitError, match="bf16 needs compute capability"):
        choose_devices("auto", "bf16", "auto", 1, [v100(0)], True)


@pytest.mark.parametrize("args, words", [
    (("cuda", "auto", "auto", 1, [], False), "no GPU is usable"),
    (("auto", "auto", 3, 2, [a6000(i) for i in range(4)], True), "not a multiple of the checkpoint's MP=2"),
    (("auto", "auto", 4, 2, [a6000(0), a6000(1)], True), "needs 4 GPUs, 2 are visible"),
    (("cpu", "auto", 3, 2, [], False), "not a multiple"),
])
def test_impossible_process_counts_are_errors(args, words):
    with pytest.raises(LlamakitError, match=words):
        choose_devices(*args)


def test_memory_estimate_confirms_the_zeitonline_settings_fit_two_a6000():
    z = PRESETS["llama-13b"]
    two = Devices("cuda", 2, 1, "bf16", "nccl", (a6000(0), a6000(1)))
    text, warn = memory_line(z, 32000, two, "none", 32, 1024)
    assert warn is None and "weights 12.1 GiB" in text and "all max_batch_size 32 sequences at once" in text
    small = Devices("cuda", 1, 1, "bf16", "nccl", (GpuInfo(0, "RTX 4090", 24 * GiB, 23 * GiB, (8, 9)),) * 2)
    _, warn = memory_line(z, 32000, small, "none", 32, 4096, "/data/13B")  # bf16 weights alone are 24.2 GiB
    assert warn.startswith("the weights (24.2 GiB) and the reserve leave no room") and "quantize: int8" in warn


H200 = GpuInfo(0, "NVIDIA H200", int(139.8 * GiB), int(139.8 * GiB), (9, 0))


def engine_tokens(config, mp: int, dtype: str, quantize: str, batch: int, seq: int, gpu_bytes: int,
                  kv_cache_dtype: str = "auto") -> int:
    """What engine.kv_cache_blocks sizes for the same inputs: the GPU holding the weights, one decode step as the
    plan estimates it (the engine measures it)."""
    import torch

    from llamakit.engine.api import EngineConfig
    from llamakit.engine.engine import kv_cache_blocks
    from llamakit.memory import decode_step_bytes, weight_bytes_per_rank, weight_dtype

    cfg = EngineConfig(max_seq_len=seq, max_batch_size=batch, dtype=dtype, device="cuda", quantize=quantize,
                       kv_cache_dtype=kv_cache_dtype)
    held = weight_bytes_per_rank(config, 32000, mp, weight_dtype(dtype, quantize))
    blocks = kv_cache_blocks(cfg, config.with_vocab(32000), mp, torch.bfloat16, torch.device("cpu"), batch,
                             decode_step_bytes(config, 32000, batch), gpu=(gpu_bytes, held))
    return (blocks - 1) * cfg.block_size  # the scratch block holds no sequence


@pytest.mark.parametrize("preset, mp, quantize, batch, seq, util, gpu", [
    ("llama-7b", 1, "none", 1024, 1024, 1.0, H200),  # the stop note's case: it warned "set max_batch_size: 252"
    ("llama-13b", 2, "none", 1024, 1024, 0.34, H200),  # the users' 48 GB A6000, emulated on an H200
    ("llama-13b", 2, "none", 32, 1024, 1.0, a6000(0)),  # capped by max_batch_size: all 32 at once
    ("llama-65b", 2, "int8", 512, 2048, 1.0, a6000(0)),
])
def test_the_plan_states_the_kv_cache_the_engine_sizes(preset, mp, quantize, batch, seq, util, gpu):
    """A big max_batch_size on a paged cache is an upper limit, not a warning; the plan's token figure is the
    engine's (engine.kv_cache_blocks, called here with the same inputs): one function does the arithmetic."""
    dev = Devices("cuda", mp, 1, "bf16", "nccl", (gpu,) * mp)
    text, warn = memory_line(PRESETS[preset], 32000, dev, quantize, batch, seq, "/ck", 400, utilization=util)
    assert warn is None
    tokens = engine_tokens(PRESETS[preset], mp, "bf16", quantize, batch, seq, int(gpu.total_bytes * util)
                           if util < 1 else gpu.total_bytes)
    assert f"= {tokens:,} tokens: " in text and tokens >= seq
    assert ("is an upper limit" in text) == (tokens < batch * seq)
    if util < 1:
        assert "gpu_memory_utilization 0.34 of 139.8 GiB" in text


def test_an_fp8_kv_cache_holds_twice_the_tokens_in_the_plan_the_engine_and_doctor():
    """kv_cache_dtype fp8 (one byte a value): the 13B recipe on the users' two 48 GB cards holds twice the tokens,
    and the plan, the engine's sizing and doctor's fit say the same number."""
    from llamakit import fit

    cfg, gpu = PRESETS["llama-13b"], a6000(0)
    dev = Devices("cuda", 2, 1, "bf16", "nccl", (gpu, gpu))
    tokens = {kv: engine_tokens(cfg, 2, "bf16", "none", 1024, 1024, gpu.total_bytes, kv) for kv in ("auto", "fp8")}
    assert 2 * tokens["auto"] - 32 <= tokens["fp8"] <= 2 * tokens["auto"] + 32  # whole 16-token blocks
    for kv in ("auto", "fp8"):
        text, warn = memory_line(cfg, 32000, dev, "none", 1024, 1024, "/ck", 400, kv_cache_dtype=kv)
        assert warn is None and f"= {tokens[kv]:,} tokens: " in text
        assert ("kv_cache_dtype: fp8 would hold about twice as many" in text) == (kv == "auto")  # the way to more
    plain = fit.verdict(cfg, 32000, 2, "bf16", 1024, 1024, gpu.total_bytes, 2)
    fp8 = fit.verdict(cfg, 32000, 2, "bf16", 1024, 1024, gpu.total_bytes, 2, kv_dtype="fp8")
    assert abs(fp8.kv_tokens - 2 * plain.kv_tokens) <= 32


def test_the_plan_warns_only_when_one_sequence_does_not_fit_and_the_engine_refuses_it():
    cfg = PRESETS["llama-7b"]
    card = GpuInfo(0, "small", 16 * GiB, 16 * GiB, (8, 6))  # 12.6 GiB of weights + reserve: ~1,500 tokens left
    dev = Devices("cuda", 1, 1, "bf16", "nccl", (card,))
    assert memory_line(cfg, 32000, dev, "none", 8, 1024, "/ck")[1] is None
    _, warn = memory_line(cfg, 32000, dev, "none", 8, 4096, "/ck")
    assert warn.startswith("the KV cache left (") and "less than one sequence of max_seq_len 4096" in warn
    assert "quantize: int8" in warn
    with pytest.raises(LlamakitError, match="less than one sequence of max_seq_len 4096"):
        engine_tokens(cfg, 1, "bf16", "none", 8, 4096, card.total_bytes)


def test_gpu_memory_utilization_caps_what_a_process_may_use():
    from llamakit.memory import CUDA_CONTEXT_BYTES, usable_bytes

    total = int(139.8 * GiB)
    assert usable_bytes(total, free=total - GiB, held=0, fraction=0.34) == int(0.34 * total)  # the cap, not free
    # another process holds 27 GiB: this one may use what is free and what it holds itself
    assert usable_bytes(total, free=100 * GiB, held=12 * GiB) == 112 * GiB + CUDA_CONTEXT_BYTES


# ---------------------------------------------------------------- plan_run on real tiny checkpoints


def recipe(tmp_path: Path, ckpt: Path, prompts: str, **keys: object) -> Path:
    (tmp_path / "prompts.jsonl").write_text(prompts, encoding="utf-8")
    body = {"ckpt_dir": str(ckpt), "prompt_path": str(tmp_path / "prompts.jsonl"),
            "out_path": str(tmp_path / "out.jsonl"), "max_seq_len": 64, "max_gen_len": 16, **keys}
    p = tmp_path / "r.yaml"
    p.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items()), encoding="utf-8")
    return p


PROMPTS = '{"id": 1, "prompt": "Guten Morgen"}\n{"id": 2, "prompt": "Hello there"}\n'


def test_plan_for_a_mp2_checkpoint_on_four_gpus(tiny_factory, tmp_path):
    setup = plan_run(recipe(tmp_path, tiny_factory("llama2", 2), PROMPTS), gpu_facts=([a6000(i) for i in range(4)],
                                                                                      True))
    plan, argv = setup.plan, setup.argv
    assert (plan.mp, plan.dp, plan.device, plan.dtype, plan.backend) == (2, 2, "cuda", "bf16", "nccl")
    assert (plan.total, plan.pending, plan.already_done) == (2, 2, 0)
    assert argv[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert argv[argv.index("--nproc_per_node") + 1] == "4" and argv[-3:-1] == ["-m", "llamakit.run.worker"]
    assert 0 < int(argv[argv.index("--master_port") + 1]) < 65536
    assert argv == torchrun_argv(plan, Path(plan.run_dir) / "plan.json")
    assert not Path(plan.run_dir).exists() and not Path(plan.out_path).exists()  # planning writes nothing


def test_plan_stops_when_the_gpus_cannot_hold_mp(tiny_factory, tmp_path):
    with pytest.raises(LlamakitError, match="needs 2 GPUs"):
        plan_run(recipe(tmp_path, tiny_factory("llama2", 2), PROMPTS), gpu_facts=([a6000(0)], True))


def test_tokenizer_of_another_vocabulary_is_refused(tiny_factory, tmp_path):
    other = tmp_path / "other.model"
    train_tokenizer(other, vocab_size=640)
    with pytest.raises(LlamakitError) as e:
        plan_run(recipe(tmp_path, tiny_factory(), PROMPTS, tokenizer_path=str(other)), gpu_facts=([], False))
    assert "640 tokens" in e.value.what and "512 rows" in e.value.what
    assert e.value.what.startswith(f"tokenizer_path {other}: ")  # told at the recipe line that set it
    assert e.value.where == str(tmp_path / "r.yaml") and e.value.line is not None
    assert "tokenizer_path" in e.value.fix


def test_long_prompt_is_refused_before_anything_starts(tiny_factory, tmp_path):
    long = json.dumps({"id": 3, "prompt": "Ein sehr langer Satz über Straßenbahnen. " * 20}, ensure_ascii=False)
    with pytest.raises(LlamakitError) as e:
        plan_run(recipe(tmp_path, tiny_factory(), PROMPTS + long + "\n"), gpu_facts=([], False))
    assert e.value.line == 3 and "more than max_seq_len - max_gen_len = 48" in e.value.what
    assert "on_long_prompt" in e.value.fix and not (tmp_path / ".out.jsonl.llamakit").exists()


# ---------------------------------------------------------------- the CLI: one clean line, nothing started


def cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "LLAMAKIT_CACHE": str(tmp_path / "cache"), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "llamakit", "run", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_errors_are_one_line_and_start_nothing(tiny_factory, tmp_path):
    r = recipe(tmp_path, tiny_factory(), PROMPTS)
    (tmp_path / "prompts.jsonl").write_bytes(b'{"id": 1, "prompt": "ok"}\n{"id": 2, "prompt": "Gr\xfc\xdfe"}\n')
    res = cli(tmp_path, str(r))
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.count("\n") == 1 and res.stderr.startswith(f"error: {tmp_path / 'prompts.jsonl'}:2: not UTF-8")
    assert not (tmp_path / "out.log").exists() and not (tmp_path / ".out.jsonl.llamakit").exists()
    res = cli(tmp_path, str(r), "--set", "max_batch_size=many")
    assert res.returncode == 2 and res.stderr.startswith("error: --set max_batch_size=many: key 'max_batch_size'")


def test_cli_dry_run_prints_the_plan_and_the_torchrun_command(tmp_path):
    res = cli(tmp_path, "demo", "--dry-run", "--nproc", "1", "--set", "device=cpu")
    assert res.returncode == 0, res.stderr
    assert "MP=1 x DP=1" in res.stdout and "backend gloo" in res.stdout and "10 to generate" in res.stdout
    assert "-m torch.distributed.run" in res.stdout and "--nproc_per_node 1" in res.stdout
    assert str(tmp_path / "demo-output.jsonl") in res.stdout and not (tmp_path / "demo-output.jsonl").exists()


def test_resuming_an_interrupted_run_with_other_sampling_settings_is_refused(tiny_factory, tmp_path):
    r = recipe(tmp_path, tiny_factory(), PROMPTS, temperature=0.8)
    setup = plan_run(r, gpu_facts=([], False))
    Path(setup.plan.run_dir).mkdir()
    setup.plan.save(setup.plan_file)  # what an interrupted run leaves behind
    # no row written yet: nothing to mix, other settings are fine
    assert plan_run(r, ["temperature=0.7"], gpu_facts=([], False)).plan.engine["temperature"] == 0.7
    row = {"id": 1, "prompt": "Guten Morgen", "completion": " x", "prompt_tokens": 3, "completion_tokens": 1,
           "finish_reason": "length"}
    (tmp_path / "out.jsonl").write_text(json.dumps(row) + "\n", encoding="utf-8")  # one row of two
    assert plan_run(r, ["max_batch_size=2"], gpu_facts=([], False)).plan.engine["max_batch_size"] == 2
    with pytest.raises(LlamakitError) as e:
        plan_run(r, ["temperature=0.7", "seed=5"], gpu_facts=([], False))
    assert "temperature 0.8 -> 0.7; seed 1 -> 5" in e.value.what and "new output file (--out NEW.jsonl)" in e.value.fix
    assert "started with other settings" in e.value.what


def test_a_finished_output_rerun_with_other_settings_says_so(tiny_factory, tmp_path):
    r = recipe(tmp_path, tiny_factory(), PROMPTS, temperature=0.8)
    setup = plan_run(r, gpu_facts=([], False))
    Path(setup.plan.run_dir).mkdir()
    setup.plan.save(setup.plan_file)  # what a finished run keeps
    rows = [{"id": i, "prompt": p, "completion": " x", "prompt_tokens": 3, "completion_tokens": 1,
             "finish_reason": "length"} for i, p in [(1, "Guten Morgen"), (2, "Hello there")]]
    (tmp_path / "out.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows), encoding="utf-8")
    assert plan_run(r, gpu_facts=([], False)).plan.pending == 0  # same settings: nothing to do, no error
    with pytest.raises(LlamakitError) as e:
        plan_run(r, ["temperature=1.0"], gpu_facts=([], False))
    assert "complete and was written with other settings (temperature 0.8 -> 1.0)" in e.value.what
    assert "--out NEW.jsonl" in e.value.fix


def test_a_moved_project_folder_is_the_same_run_but_other_weights_are_not(tiny_factory, tmp_path):
    import shutil

    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.copytree(tiny_factory(), proj / "ckpt")
    r = recipe(proj, proj / "ckpt", PROMPTS, temperature=0.8)
    setup = plan_run(r, gpu_facts=([], False))
    Path(setup.plan.run_dir).mkdir()
    setup.plan.save(setup.plan_file)
    _write_rows(proj / "out.jsonl", [(1, "Guten Morgen")])
    moved = tmp_path / "moved"
    proj.rename(moved)
    r2 = recipe(moved, moved / "ckpt", PROMPTS, temperature=0.8)
    assert plan_run(r2, gpu_facts=([], False)).plan.pending == 1  # same files, other paths: resumes
    other = tiny_factory(seed=1)  # same shape and file sizes, other weights (as base vs chat of one size)
    with pytest.raises(LlamakitError) as e:
        plan_run(recipe(moved, other, PROMPTS, temperature=0.8), gpu_facts=([], False))
    assert "started with other settings (checkpoint" in e.value.what


def test_rows_made_from_an_edited_prompt_file_are_named(tiny_factory, tmp_path):
    r = recipe(tmp_path, tiny_factory(), PROMPTS)
    _write_rows(tmp_path / "out.jsonl", [(1, "Guten Abend")])  # the prompt file says "Guten Morgen" for id 1
    with pytest.raises(LlamakitError) as e:
        plan_run(r, gpu_facts=([], False))
    assert "generated from another text" in e.value.what and "(line 1)" in e.value.what
    assert e.value.where == str(tmp_path / "out.jsonl") and e.value.line == 1


def test_settings_of_a_live_run_are_not_compared_it_is_named(tiny_factory, tmp_path):
    import fcntl
    import os

    r = recipe(tmp_path, tiny_factory(), PROMPTS, temperature=0.8)
    setup = plan_run(r, gpu_facts=([], False))
    Path(setup.plan.run_dir).mkdir()
    setup.plan.save(setup.plan_file)
    _write_rows(tmp_path / "out.jsonl", [(1, "Guten Morgen")])
    fd = os.open(Path(setup.plan.run_dir) / "lock", os.O_RDWR | os.O_CREAT)
    os.write(fd, b"4242")
    fcntl.flock(fd, fcntl.LOCK_EX)  # a live run holds the lock
    try:
        with pytest.raises(LlamakitError) as e:
            plan_run(r, ["temperature=0.7"], gpu_facts=([], False))
        assert "another llamakit run (pid 4242) is writing this output" in e.value.what
    finally:
        os.close(fd)


def _write_rows(path: Path, rows: list[tuple[int, str]]) -> None:
    path.write_text("".join(json.dumps({"id": i, "prompt": p, "completion": " x", "prompt_tokens": 3,
                                        "completion_tokens": 1, "finish_reason": "length"}) + "\n"
                            for i, p in rows), encoding="utf-8")


def test_missing_checkpoint_tokenizer_and_prompts_show_the_resolved_path(tiny_factory, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = recipe(tmp_path, Path("models/13B"), PROMPTS)
    with pytest.raises(LlamakitError) as e:
        plan_run(r, gpu_facts=([], False))
    # the resolved path in the message, told at the recipe line that set it
    assert e.value.where == str(r) and e.value.line == 1
    assert e.value.what == f"ckpt_dir {tmp_path / 'models/13B'}: checkpoint folder does not exist"
    r = recipe(tmp_path, tiny_factory(), PROMPTS, tokenizer_path="tok/tokenizer.model")
    with pytest.raises(LlamakitError) as e:
        plan_run(r, gpu_facts=([], False))
    assert e.value.what == f"tokenizer_path {tmp_path / 'tok/tokenizer.model'}: tokenizer file does not exist"
    r = recipe(tmp_path, tiny_factory(), PROMPTS, prompt_path="data/prompts.jsonl")
    with pytest.raises(LlamakitError) as e:
        plan_run(r, gpu_facts=([], False))
    assert e.value.what == f"prompt_path {tmp_path / 'data/prompts.jsonl'}: prompt file does not exist"
    assert (e.value.where, e.value.line) == (str(r), 2)


def test_gpu_memory_utilization_is_a_recipe_key_and_a_set_override(tiny_factory, tmp_path):
    """The key reaches the engine's config and the plan sizes the GPU as capped; a bad value is one line with the
    recipe's file:line."""
    ckpt = tiny_factory("llama2", 1)
    r = recipe(tmp_path, ckpt, PROMPTS, gpu_memory_utilization=0.5)
    setup = plan_run(r, gpu_facts=([H200], True))
    assert setup.plan.engine["gpu_memory_utilization"] == 0.5
    assert "(gpu_memory_utilization 0.5 of 139.8 GiB)" in setup.plan.memory
    setup = plan_run(r, ["gpu_memory_utilization=0.34"], gpu_facts=([H200], True))
    assert setup.plan.engine["gpu_memory_utilization"] == 0.34 and "47.5 GiB per GPU" in setup.plan.memory
    with pytest.raises(LlamakitError) as e:
        plan_run(recipe(tmp_path, ckpt, PROMPTS, gpu_memory_utilization=1.5), gpu_facts=([H200], True))
    assert e.value.line == 6 and "gpu_memory_utilization" in e.value.what and "<= 1" in e.value.fix


def test_the_plan_sizes_from_the_total_cuda_reports_not_nvmls():
    """NVML's total includes what the driver reserves (v2 memory info says how much); CUDA's total, which the engine
    sizes from, does not (an H200: 143,771 vs 143,155 MiB). The NVML reader keeps both; the plan uses CUDA's."""
    from types import SimpleNamespace

    from llamakit.gpus import read_gpu

    MiB = 2**20

    class Nvml:  # the three calls read_gpu makes, answering as an H200 with driver 580 does
        nvmlMemory_v2 = 33554472

        def nvmlDeviceGetHandleByIndex(self, i):
            return i

        def nvmlDeviceGetName(self, h):
            return b"NVIDIA H200"

        def nvmlDeviceGetCudaComputeCapability(self, h):
            return (9, 0)

        def nvmlDeviceGetMemoryInfo(self, h, version=None):
            if version == self.nvmlMemory_v2:
                return SimpleNamespace(total=143771 * MiB, reserved=616 * MiB, free=143155 * MiB, used=0)
            return SimpleNamespace(total=143771 * MiB, free=143155 * MiB, used=616 * MiB)

    g = read_gpu(Nvml(), 0)
    assert (g.total_bytes, g.cuda_total_bytes) == (143771 * MiB, 143155 * MiB)
    text, _ = memory_line(PRESETS["llama-7b"], 32000, Devices("cuda", 1, 1, "bf16", "nccl", (g,)), "none", 8, 1024)
    assert "of 139.8 GiB per GPU" in text


def test_kv_cache_dtype_values_are_the_same_everywhere():
    """The recipe, the engine's config and bench accept the same kv_cache_dtype values (vLLM's names)."""
    import typing

    from llamakit.engine.api import EngineConfig
    from llamakit.model.kv_cache import KV_CACHE_DTYPES
    from llamakit.run.recipe import Recipe

    assert typing.get_args(Recipe.model_fields["kv_cache_dtype"].annotation) == KV_CACHE_DTYPES
    assert typing.get_args(typing.get_type_hints(EngineConfig)["kv_cache_dtype"]) == KV_CACHE_DTYPES


def test_batch_invariant_reaches_the_engine_and_the_plan_says_what_it_does(tiny_factory, tmp_path):
    from llamakit.run.plan import describe

    r = recipe(tmp_path, tiny_factory(), PROMPTS, batch_invariant=True)
    setup = plan_run(r, gpu_facts=([], False))
    assert setup.plan.engine["batch_invariant"] is True
    batch = next(line for line in describe(setup.plan, setup.argv) if line.startswith("batch "))
    assert "batch-invariant" in batch and "the same bits at any batch" in batch
    plain = plan_run(r, ["batch_invariant=false"], gpu_facts=([], False))
    assert not plain.plan.engine["batch_invariant"]
    assert "invariant" not in next(line for line in describe(plain.plan, plain.argv) if line.startswith("batch "))
