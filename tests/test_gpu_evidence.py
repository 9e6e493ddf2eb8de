"""The GPU evidence as tests (`python -m pytest -m gpu`; skipped without CUDA): what tools/gpu_evidence.sh and
tools/gpu2_evidence.sh used to log by hand is now checked. Big shapes, real processes, real signals.

With LLAMAKIT_EVIDENCE=DIR set, each test copies the logs it made into DIR (docs/evidence/<date>-<device>/ keeps
the ones docs/BENCHMARKS.md cites; docs/evidence/README.md names the test or command behind each file).
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
GiB = 1024**3
N_GPUS = torch.cuda.device_count() if torch.cuda.is_available() else 0
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(N_GPUS == 0, reason="needs a CUDA GPU")]
two_gpus = pytest.mark.skipif(N_GPUS < 2, reason="needs 2 CUDA GPUs")


def gpu_gib() -> float:
    return torch.cuda.get_device_properties(0).total_memory / GiB if N_GPUS else 0.0


def env() -> dict[str, str]:
    """This checkout first on the path; NVLink multicast off (the device machines' NCCL hangs with it)."""
    e = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    return e


def llamakit(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamakit", *args], capture_output=True, text=True, env=env(),
                          timeout=timeout)


def evidence(*paths: Path) -> None:
    """Keep the logs a test made where LLAMAKIT_EVIDENCE points."""
    dst = os.environ.get("LLAMAKIT_EVIDENCE")
    if dst:
        Path(dst).mkdir(parents=True, exist_ok=True)
        for p in paths:
            if p.exists():
                shutil.copy(p, Path(dst) / p.name)


@pytest.fixture
def big_dir(tmp_path):
    """A folder for a full-size checkpoint, removed after the test (the GPU machine's disk holds only a few)."""
    d = tmp_path / "big"
    d.mkdir()
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tiny_tok(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("tiny") / "tiny"
    assert llamakit("make-tiny", str(d)).returncode == 0
    return d


def write_ckpt(out: Path, tok_dir: Path, preset: str, mp: int, layers: int | None = None,
               device: str = "cuda") -> Path:
    """A full-width checkpoint with random weights (vocab of the tiny tokenizer), as Meta lays it out."""
    from llamakit.checkpoint.params import PRESETS
    from llamakit.checkpoint.synth import write_random_checkpoint

    cfg = PRESETS[preset].with_vocab(512)
    if layers is not None:
        cfg = replace(cfg, n_layers=layers)
    write_random_checkpoint(out, cfg, mp=mp, dtype="bf16", vocab=512, device=device, checklist=False)
    shutil.copy(tok_dir / "tokenizer.model", out / "tokenizer.model")
    return out


def prompts(n: int, path: Path) -> Path:
    src = [json.loads(line) for line in (REPO / "llamakit/assets/demo-prompts.jsonl").open(encoding="utf-8")]
    with path.open("w", encoding="utf-8") as f:
        for i in range(n):
            f.write(json.dumps({**src[i % len(src)], "id": f"p{i:05d}"}, ensure_ascii=False) + "\n")
    return path


def recipe(path: Path, ckpt: Path, prompt_file: Path, out: Path, batch: int, gen: int, seq: int = 512) -> Path:
    path.write_text(f"ckpt_dir: {ckpt}\nprompt_path: {prompt_file}\nout_path: {out}\nlogging_path: {out}.log\n"
                    f"max_seq_len: {seq}\nmax_gen_len: {gen}\nmax_batch_size: {batch}\ntemperature: 0.8\n"
                    "top_p: 0.95\n", encoding="utf-8")
    return path


def ids(out: Path) -> collections.Counter:
    return collections.Counter(json.loads(line)["id"] for line in out.open(encoding="utf-8"))


def rows(out: Path) -> int:
    return sum(1 for _ in out.open(encoding="utf-8")) if out.exists() else 0


def kill_after(rec: Path, out: Path, n_rows: int, limit: float = 180) -> int:
    """Start `llamakit run rec` in its own process group, kill -9 the whole group once `n_rows` rows exist."""
    p = subprocess.Popen([sys.executable, "-m", "llamakit", "run", str(rec)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=env(), start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit and rows(out) < n_rows and p.poll() is None:
        time.sleep(0.5)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    for _ in range(60):  # the workers die with their group; wait until none is left
        try:
            os.killpg(p.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.5)
    return rows(out)


def resume_completes(rec: Path, out: Path, n: int) -> None:
    res = llamakit("run", str(rec))
    assert res.returncode == 0, res.stderr[-2000:]
    c = ids(out)
    assert len(c) == n and max(c.values()) == 1, f"{n - len(c)} missing, {sum(v > 1 for v in c.values())} repeated"


# ---------------------------------------------------------------- one GPU (was tools/gpu_evidence.sh)


def test_7b_shape_run_killed_with_sigkill_resumes_without_loss_or_repeat(tiny_tok, tmp_path, big_dir):
    ck = write_ckpt(big_dir / "ck7b", tiny_tok, "llama-7b", mp=1)
    res = llamakit("inspect", str(ck), "--json")
    assert res.returncode == 0 and json.loads(res.stdout)["model"]["param_count"] > 6e9
    out = tmp_path / "out7b.jsonl"
    rec = recipe(tmp_path / "r7b.yaml", ck, prompts(400, tmp_path / "p.jsonl"), out, batch=64, gen=128)
    killed = kill_after(rec, out, 100)
    assert 0 < killed < 400
    resume_completes(rec, out, 400)
    evidence(Path(f"{out}.log"))


def test_ctrl_c_during_a_cuda_graph_run_stops_cleanly_and_resumes(tiny_tok, tmp_path):
    out, n = tmp_path / "out-stop.jsonl", 20000
    cmd = [sys.executable, "-m", "llamakit", "run", "demo", "--set", f"ckpt_dir={tiny_tok}", "--set", "device=cuda",
           "--set", f"prompt_path={prompts(n, tmp_path / 'p.jsonl')}", "--set", "max_gen_len=64",
           "--set", "max_batch_size=64", "--set", f"logging_path={out}.log", "--out", str(out)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                         start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < 120 and rows(out) < 2000 and p.poll() is None:
        time.sleep(0.2)
    os.killpg(p.pid, signal.SIGINT)
    _, err = p.communicate(timeout=90)
    assert p.returncode != 0 and "Traceback" not in err and len(err.strip().splitlines()) <= 2, err
    assert "KeyboardInterrupt" not in Path(f"{out}.log").read_text(encoding="utf-8")
    res = subprocess.run(cmd, capture_output=True, text=True, env=env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    c = ids(out)
    assert len(c) == n and max(c.values()) == 1
    evidence(Path(f"{out}.log"))


def test_triton_kernels_fit_every_gpu_generations_shared_memory():
    res = subprocess.run([sys.executable, str(REPO / "tools/triton_arch_check.py")], capture_output=True, text=True,
                         env=env(), timeout=900)
    assert res.returncode == 0 and "all kernels fit every target" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]


@pytest.mark.skipif(gpu_gib() < 40, reason="a 13B share needs a GPU of 40 GiB or more")
def test_a_run_at_the_max_batch_inspect_promises_fits(tiny_tok, tmp_path, big_dir):
    """KV cache filled to 2,000 of 2,048 tokens in every slot, at the batch inspect says fits this GPU."""
    ck = write_ckpt(big_dir / "ck13", tiny_tok, "llama-13b", mp=1)
    res = llamakit("inspect", str(ck), "--batch", "1", "--seq", "2048", "--json")
    best = json.loads(res.stdout)["memory"]["max_batch_here"]
    assert best >= 1
    out = tmp_path / "out-fill.jsonl"
    rec = recipe(tmp_path / "r.yaml", ck, prompts(best, tmp_path / "p.jsonl"), out, batch=best, gen=1990, seq=2048)
    with rec.open("a", encoding="utf-8") as f:
        f.write("on_long_prompt: truncate\n")
    run = llamakit("run", str(rec), timeout=900)
    assert run.returncode == 0 and "out of memory" not in run.stderr, run.stderr[-2000:]
    assert len(ids(out)) == best
    evidence(Path(f"{out}.log"))


@pytest.mark.skipif(gpu_gib() < 100, reason="the 65B share at MP=2 needs a GPU of more than 80 GiB")
@pytest.mark.parametrize("preset,layers,quantize,batch", [("llama-65b", 40, "int8", 6), ("llama-30b", 30, "int8", 20),
                                                          ("llama-30b", 30, "none", 10), ("llama-13b", 20, "none", 43),
                                                          ("llama-7b", 16, "none", 80)])
def test_memory_plan_covers_the_measured_process_total(preset, layers, quantize, batch):
    res = subprocess.run([sys.executable, str(REPO / "tools/memory_check.py"), preset, str(layers), quantize,
                          str(batch), "2048"], capture_output=True, text=True, env=env(), timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    m = json.loads(res.stdout.strip().splitlines()[-1])
    assert m["plan_total_gib"] >= m["measured_process_total_gib"], m


# ---------------------------------------------------------------- two GPUs (was tools/gpu2_evidence.sh)


@two_gpus
def test_mp2_over_nccl_equals_mp1_on_the_cpu_greedy(tiny_tok, tmp_path):
    t2 = tmp_path / "t2"
    assert llamakit("make-tiny", str(t2), "--mp", "2").returncode == 0
    a, b = tmp_path / "mp2-gpu.jsonl", tmp_path / "mp1-cpu.jsonl"
    assert llamakit("run", "demo", "--set", f"ckpt_dir={t2}", "--set", "dtype=fp32", "--set", "device=cuda",
                    "--out", str(a)).returncode == 0
    assert llamakit("run", "demo", "--set", f"ckpt_dir={tiny_tok}", "--set", "device=cpu", "--out",
                    str(b)).returncode == 0
    got = [json.loads(line)["completion"] for line in a.open(encoding="utf-8")]
    assert got and got == [json.loads(line)["completion"] for line in b.open(encoding="utf-8")]


@two_gpus
def test_dp2_writes_every_prompt_once(tiny_tok, tmp_path):
    out = tmp_path / "outdp.jsonl"
    rec = recipe(tmp_path / "r.yaml", tiny_tok, prompts(400, tmp_path / "p.jsonl"), out, batch=32, gen=32, seq=384)
    res = llamakit("run", str(rec))
    assert res.returncode == 0 and "DP=2" in Path(f"{out}.log").read_text(encoding="utf-8")
    c = ids(out)
    assert len(c) == 400 and max(c.values()) == 1


@two_gpus
def test_13b_shape_at_mp2_killed_with_sigkill_resumes_without_loss_or_repeat(tiny_tok, tmp_path, big_dir):
    ck = write_ckpt(big_dir / "ck13", tiny_tok, "llama-13b", mp=2)
    out = tmp_path / "out13.jsonl"
    rec = recipe(tmp_path / "r13.yaml", ck, prompts(600, tmp_path / "p.jsonl"), out, batch=64, gen=128, seq=384)
    killed = kill_after(rec, out, 150)
    assert 0 < killed < 600
    resume_completes(rec, out, 600)
    evidence(Path(f"{out}.log"))


# ---------------------------------------------------------------- CPU, big RAM (was tools/reshard_30b_cpu.sh)


def test_30b_width_resharded_4_to_2_and_1_gives_the_same_greedy_text(tiny_tok, tmp_path, big_dir):
    """LLaMA-30B's width (2 of its 60 layers) as Meta ships it (MP=4), resharded, run on the CPU with gloo."""
    ck = write_ckpt(big_dir / "ck30", tiny_tok, "llama-30b", mp=4, layers=2, device="cpu")
    src = (REPO / "llamakit/assets/demo-prompts.jsonl").read_text(encoding="utf-8").splitlines()[:6]
    (tmp_path / "p.jsonl").write_text("\n".join(src) + "\n", encoding="utf-8")
    texts = {}
    for mp in (4, 2, 1):
        d = ck if mp == 4 else big_dir / f"ck30-mp{mp}"
        if mp != 4:
            assert llamakit("reshard", str(ck), str(d), "--mp", str(mp)).returncode == 0
        out = tmp_path / f"out-mp{mp}.jsonl"
        res = llamakit("run", "demo", "--set", f"ckpt_dir={d}", "--set", f"prompt_path={tmp_path / 'p.jsonl'}",
                       "--set", "device=cpu", "--set", "dtype=fp32", "--set", "max_gen_len=12", "--out", str(out))
        assert res.returncode == 0, res.stderr[-2000:]
        texts[mp] = [json.loads(line)["completion"] for line in out.open(encoding="utf-8")]
    assert texts[4] == texts[2] == texts[1] and len(texts[4]) == 6


@two_gpus
def test_batch_invariant_at_mp2_over_nccl_gives_the_same_rows_alone_and_in_a_batch(tiny_tok, tmp_path, big_dir,
                                                                                    capsys):
    """The users' layout: 13B width at MP=2 over NCCL, bf16, Triton kernels (4 of its layers). With batch_invariant
    the rows of a run at max_batch_size 1 and at 16 are identical, logprob floats included; without it, printed:
    how many of the sampled texts and logprob lists differ."""
    ck = write_ckpt(big_dir / "ck13", tiny_tok, "llama-13b", mp=2, layers=4)
    src = prompts(24, tmp_path / "p.jsonl")
    got = {}
    for invariant in (True, False):
        for batch in (1, 16):
            out = tmp_path / f"inv{int(invariant)}-b{batch}.jsonl"
            rec = recipe(tmp_path / f"inv{int(invariant)}-b{batch}.yaml", ck, src, out, batch=batch, gen=24, seq=384)
            rec.write_text(rec.read_text() + f"logprobs: 2\nbatch_invariant: {str(invariant).lower()}\n")
            res = llamakit("run", str(rec))
            assert res.returncode == 0, res.stderr[-2000:]
            got[invariant, batch] = [json.loads(line) for line in out.open(encoding="utf-8")]
    assert len(got[True, 1]) == 24 and got[True, 1] == got[True, 16]
    plain_1, plain_16 = got[False, 1], got[False, 16]
    texts = sum(a["completion"] != b["completion"] for a, b in zip(plain_1, plain_16))
    lps = sum(a["token_logprobs"] != b["token_logprobs"] for a, b in zip(plain_1, plain_16))
    with capsys.disabled():
        print(f"\n13B width, MP=2, bf16, batch 1 vs 16 without batch_invariant: {texts} of 24 texts and {lps} of 24 "
              "logprob lists differ; with it: none")
