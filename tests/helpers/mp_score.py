"""Run under torchrun: score texts with llamakit's Scorer at MP = world size and dump per-token scores as JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

from llamakit.distributed import init_model_parallel
from llamakit.score.scorer import Scorer, load_model
from llamakit.score.texts import Text, Tokenized, windows


def score_texts(ckpt: str, ref: str | None, items: list[list], max_seq_len: int, stride: int | None,
                max_batch_size: int) -> dict[str, dict[str, list]]:
    """items: [tokens, n_context] per text -> {text index: {logprob, rank, entropy, mu, s2}} (windows joined)."""
    model = load_model(ckpt, max_seq_len, "fp32", "cpu")
    reference = load_model(ref, max_seq_len, "fp32", "cpu") if ref else None
    scorer = Scorer(model, reference, max_batch_size=max_batch_size, max_batch_tokens=4 * max_seq_len)
    wins = [w for i, (toks, n_ctx) in enumerate(items)
            for w in windows(Tokenized(Text(i, i + 1, i, "x"), toks, n_ctx), max_seq_len, stride)]
    got: dict[int, list] = {}
    for w, s in scorer.score(wins):
        got.setdefault(w.key, []).append((w.part, s))
    out = {}
    for k, parts in got.items():
        parts.sort(key=lambda x: x[0])
        out[str(k)] = {f: [v for _, s in parts for v in getattr(s, f).tolist()]
                       for f in ("logprob", "rank", "entropy", "mu", "s2")}
    return out


def run_under_torchrun(nproc: int, workdir: Path, specs: list[dict]) -> list[dict[str, dict[str, list]]]:
    """Score each spec (score_texts' arguments) in one torchrun start (its start-up is most of the time)."""
    from llamakit.run.plan import free_port

    spec_path, out = workdir / "score-spec.json", workdir / "score-out.json"
    spec_path.write_text(json.dumps(specs))
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
           f"--master_port={free_port()}", "-m", "tests.helpers.mp_score", str(spec_path), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


def main() -> None:
    specs = json.loads(Path(sys.argv[1]).read_text())
    dist.init_process_group("gloo")
    init_model_parallel(int(os.environ["WORLD_SIZE"]))
    out = [score_texts(**spec) for spec in specs]
    if dist.get_rank() == 0:
        Path(sys.argv[2]).write_text(json.dumps(out))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
