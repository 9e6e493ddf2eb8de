"""Run under torchrun: generate with llamakit's engine at MP = world size and dump the completions as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist
from fairscale.nn.model_parallel.initialize import initialize_model_parallel

from llamakit.checkpoint import open_checkpoint
from llamakit.engine.api import EngineConfig, Request, SamplingParams
from llamakit.engine.engine import build_engine


def run_under_torchrun(ckpt: Path, nproc: int, workdir: Path, config: dict, prompts: list[list[int]],
                       max_gen_len: int, params: list[dict] | None = None) -> dict[int, list]:
    """Start this module under torchrun (gloo, `nproc` ranks) from a test; {request key: [tokens, finish_reason,
    token_logprobs or None]}. `params`: per prompt, SamplingParams fields (and "sample") of its request."""
    job = {"ckpt": str(ckpt), "config": config, "max_gen_len": max_gen_len, "prompts": prompts, "params": params}
    return run_jobs_under_torchrun(nproc, workdir, [job])[0]


def run_jobs_under_torchrun(nproc: int, workdir: Path, jobs: list[dict]) -> list[dict[int, list]]:
    """Several generations (each a checkpoint of MP `nproc` and run_under_torchrun's arguments: keys ckpt, config,
    prompts, max_gen_len, params) in one torchrun start, one engine after the other (the start is most of the
    time); their outputs in order."""
    from llamakit.distributed import free_port

    workdir.mkdir(parents=True, exist_ok=True)
    spec, out = workdir / "spec.json", workdir / "out.json"
    spec.write_text(json.dumps([{**j, "ckpt": str(j["ckpt"])} for j in jobs]))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tests.helpers.mp_generate", str(spec), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [{int(k): v for k, v in got.items()} for got in json.loads(out.read_text())]


def generate(job: dict) -> dict[int, list]:
    engine = build_engine(open_checkpoint(job["ckpt"]), EngineConfig(**job["config"]))
    reqs = [Request(i, p, job["max_gen_len"]) for i, p in enumerate(job["prompts"])]
    for r, kw in zip(reqs, job.get("params") or []):
        if kw:
            kw = dict(kw)
            r.sample = kw.pop("sample", 0)
            r.params = SamplingParams(**kw)
    return {c.request.key: [c.tokens, c.finish_reason, c.logprobs.token_logprobs if c.logprobs else None]
            for c in engine.generate(reqs)}


def main() -> None:
    spec_path, out_path = sys.argv[1:3]
    jobs = json.loads(open(spec_path).read())
    dist.init_process_group("gloo")
    initialize_model_parallel(int(os.environ["WORLD_SIZE"]))
    out = [generate(job) for job in jobs]
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(out, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
