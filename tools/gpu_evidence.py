"""The one-GPU evidence of docs/BENCHMARKS.md in one device call (run from a checkout with PYTHONPATH set):

    python3 tools/gpu_evidence.py tests bench run peers --out $OUT

  tests  the GPU tests (tests/test_gpu.py: Triton kernels on the paged cache, graphs = eager, decoding controls)
  bench  `llamakit bench --preset 7b`: standard, dataset, int8 (JSON each); dataset and standard with
         --kv-cache-dtype fp8 and with --batch-invariant (in evidence.txt: a call brings back 8 files at most)
  run    `llamakit run` of a 7B-shaped checkpoint on disk (the tiny tokenizer's vocabulary) on the dataset
         workload's prompts and max_gen_len per row (ignore_eos), against `llamakit bench --params` of the same
         checkpoint and workload, in the same call
  peers  Meta's generation.py and gpt-fast on the same prompts (tools/peer_bench.py; their source under .peers/,
         carried for the call, never committed)
Each step has a timeout; one failing does not stop the others. Output: $OUT/evidence.txt plus JSON files.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PY = sys.executable


def sh(log, title: str, cmd: list[str], timeout: int, out_file: Path | None = None) -> str:
    log.write(f"\n=== {title} ({time.strftime('%H:%M:%S')})\n$ {' '.join(cmd)}\n")
    log.flush()
    t0 = time.time()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        text, rc = p.stdout, p.returncode
        err = p.stderr
    except subprocess.TimeoutExpired as e:
        text, rc, err = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "timeout", ""
    if out_file is not None:
        out_file.write_text(text)
    log.write(text[-3000:] + ("\n" + err[-1500:] if rc not in (0,) else "") + f"\nrc={rc} in {time.time() - t0:.0f} s\n")
    log.flush()
    return text


def make_run_inputs(work: Path) -> Path:
    """A 7B-shaped bf16 checkpoint with the tiny tokenizer, the dataset workload as text prompts (the bench's ids,
    decoded) with each prompt's max_gen_len, and a recipe that ignores eos (as the bench does)."""
    import torch

    from llamakit.bench import BenchOptions, dataset_gen_lens, workload
    from llamakit.checkpoint.params import PRESETS
    from llamakit.checkpoint.synth import write_random_checkpoint
    from llamakit.checkpoint.tiny import make_tiny
    from llamakit.tokenizer import Tokenizer

    if (work / "tiny").exists():
        shutil.rmtree(work / "tiny")
    tiny = make_tiny(work / "tiny")
    vocab = Tokenizer(tiny / "tokenizer.model").n_words
    ck = work / "ck7b"
    if ck.exists():
        shutil.rmtree(ck)
    write_random_checkpoint(ck, PRESETS["llama-7b"].with_vocab(vocab), mp=1, dtype="bf16", vocab=vocab,
                            device="cuda" if torch.cuda.is_available() else "cpu", checklist=False)
    shutil.copy(tiny / "tokenizer.model", ck / "tokenizer.model")
    tok = Tokenizer(ck / "tokenizer.model")
    prompts, gen = workload(BenchOptions(workload="dataset", prompts=1024), vocab)
    assert gen == dataset_gen_lens(len(prompts))
    with open(work / "prompts.jsonl", "w", encoding="utf-8") as f:
        for i, (p, g) in enumerate(zip(prompts, gen)):
            f.write(json.dumps({"id": f"d{i:04d}", "prompt": tok.decode(p), "params": {"max_gen_len": g}}) + "\n")
    recipe = work / "run.yaml"
    recipe.write_text(f"ckpt_dir: {ck}\nprompt_path: {work / 'prompts.jsonl'}\nout_path: {work / 'out.jsonl'}\n"
                      "max_seq_len: 1024\nmax_gen_len: 512\nmax_batch_size: 1024\ntemperature: 0.6\ntop_p: 0.9\n"
                      "ignore_eos: true\non_long_prompt: truncate\n")
    return recipe


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("steps", nargs="+", choices=["tests", "bench", "run", "peers"])
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu-out"))
    ap.add_argument("--work", default="/tmp/lk-evidence")
    a = ap.parse_args()
    out, work = Path(a.out), Path(a.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    lk = [PY, "-m", "llamakit"]
    with open(out / "evidence.txt", "a", encoding="utf-8") as log:
        sh(log, "device", ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"], 30)
        sh(log, "versions", [PY, "-c", "import torch, triton; print('torch', torch.__version__, 'triton', "
                                       "triton.__version__)"], 60)
        if "tests" in a.steps:
            sh(log, "GPU tests", [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"], 420)
        if "bench" in a.steps:
            for name, extra in (("standard", []), ("dataset", ["--workload", "dataset"]),
                                ("int8", ["--quantize", "int8"])):
                sh(log, f"bench {name}", lk + ["bench", "--preset", "7b", "--json"] + extra, 400,
                   out / f"bench-7b-{name}.json")
            for name, extra in (("dataset fp8 KV", ["--workload", "dataset", "--kv-cache-dtype", "fp8"]),
                                ("standard fp8 KV", ["--kv-cache-dtype", "fp8"]),
                                ("dataset batch-invariant", ["--workload", "dataset", "--batch-invariant"]),
                                ("standard batch-invariant", ["--batch-invariant"])):
                sh(log, f"bench {name}", lk + ["bench", "--preset", "7b", "--json"] + extra, 400)
        if "run" in a.steps:
            try:
                recipe = make_run_inputs(work)
            except Exception as e:  # the other steps still run
                log.write(f"run inputs failed: {e!r}\n")
            else:
                sh(log, "bench on the run's checkpoint (same shape, prompts, lengths)",
                   lk + ["bench", "--params", str(work / "ck7b" / "params.json"), "--workload", "dataset",
                         "--json"], 400, out / "bench-ck7b-dataset.json")
                sh(log, "llamakit run (same checkpoint, prompts, lengths)", lk + ["run", str(recipe)], 500,
                   out / "run-ck7b.txt")
        if "peers" in a.steps:
            sh(log, "gpt-fast batch 1", [PY, "tools/peer_bench.py", "gptfast", ".peers/gpt-fast"], 300,
               out / "gptfast.json")
            sh(log, "Meta generation.py", [PY, "tools/peer_bench.py", "meta", ".peers/llama", "1x2", "32x64"], 300,
               out / "meta.json")


if __name__ == "__main__":
    main()
