"""`llamakit bench --workload score`: the score workload of benchmark.md (1,000 texts of ~300 tokens; per-token
logprob, rank and entropy) on random weights of a preset shape; texts/s and scored tokens/s over the whole file.
Its peer, an HF forward-pass loop at batch 1 and at the best batch, is tools/hf_score_peer.py (same texts)."""

from __future__ import annotations

import datetime as _dt
import time
from dataclasses import dataclass

import torch

from llamakit.bench import lognormal_token_lists
from llamakit.errors import LlamakitError

SCORE_VOCAB = 32000


def score_texts(n: int = 1000, seed: int = 2, vocab: int = SCORE_VOCAB, max_len: int = 1024) -> list[list[int]]:
    """The score workload: text i has length max(16, min(max_len, int(lognormvariate(log 300, 0.4)))) tokens, ids
    uniform in [3, vocab), all from one random.Random(seed) stream, text by text (length, then its ids). The first
    token stands for bos: every later token is scored."""
    return lognormal_token_lists(n, 300, 0.4, 16, max_len, vocab, seed)


@dataclass
class ScoreBenchResult:
    preset: str
    device: str
    torch: str
    dtype: str
    texts: int
    scored_tokens: int
    batch: int
    seconds: float
    texts_per_s: float
    tokens_per_s: float
    peak_gpu_mem_gib: float | None
    build_s: float
    date: str
    tflop_per_s: float = 0.0  # 2 x parameters x scored tokens / seconds: the forward's arithmetic rate achieved
    workload: str = "score"


def score_bench(preset: str = "7b", device: str = "auto", dtype: str = "auto", texts: int = 1000,
                batch: int = 64) -> ScoreBenchResult:
    """Build a random-weight model (MP=1, in this process), warm up on a few texts, then score the whole file."""
    import torch.distributed as dist

    from llamakit.bench import BENCH_PRESETS, random_shard
    from llamakit.checkpoint.layout import DTYPES
    from llamakit.distributed import init_model_parallel
    from llamakit.model.llama import Transformer
    from llamakit.run.plan import free_port
    from llamakit.score.scorer import Scorer
    from llamakit.score.texts import Window

    if preset not in BENCH_PRESETS:
        raise LlamakitError(f"unknown preset {preset!r}", f"use one of: {', '.join(BENCH_PRESETS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device == "cuda" else "fp32"
    if device == "cpu" and preset != "tiny":
        raise LlamakitError(f"a {preset} shape on CPU would take hours", "use --preset tiny on CPU (a smoke test)")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device == "cuda" else "gloo",
                                init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    init_model_parallel(1)
    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    cfg = BENCH_PRESETS[preset].with_vocab(SCORE_VOCAB)
    work = score_texts(texts)
    max_seq_len = max(len(t) for t in work)
    t0 = time.perf_counter()
    model = Transformer.from_shard(cfg, random_shard(cfg, SCORE_VOCAB, 1, DTYPES[dtype], dev, 1234), max_seq_len,
                                   DTYPES[dtype], dev)
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    scorer = Scorer(model, None, max_batch_size=batch, max_batch_tokens=batch * 512)
    wins = [Window(i, 0, t, 1, len(t)) for i, t in enumerate(work)]
    for _ in scorer.score(wins[:batch]):  # warm-up: kernels chosen, allocator grown (excluded from the timing)
        pass
    _sync(dev)
    build_s = time.perf_counter() - t0
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t1 = time.perf_counter()
    n_tok = 0
    for _, s in scorer.score(wins):
        n_tok += len(s.logprob)  # each carries logprob, rank and entropy per token (on the host)
    _sync(dev)
    seconds = time.perf_counter() - t1
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    n_params = sum(p.numel() for p in model.parameters())
    return ScoreBenchResult(preset=preset, device=torch.cuda.get_device_name() if dev.type == "cuda" else "cpu",
                            torch=torch.__version__, dtype=dtype, texts=len(work), scored_tokens=n_tok, batch=batch,
                            seconds=round(seconds, 3), texts_per_s=round(len(work) / seconds, 1),
                            tokens_per_s=round(n_tok / seconds, 1),
                            peak_gpu_mem_gib=round(peak, 2) if peak else None, build_s=round(build_s, 1),
                            date=_dt.date.today().isoformat(),
                            tflop_per_s=round(2 * n_params * n_tok / seconds / 1e12, 4))


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()
