"""Scoring on the model: length-sorted batches of token windows, one forward each, per-token scores by chunks of
positions from this rank's vocabulary shard (llamakit.score.reduce). Every rank of a model-parallel group runs
the same batches in the same order."""

from __future__ import annotations

from typing import Iterable, Iterator

import torch

from llamakit.model.llama import Transformer, model_parallel_info
from llamakit.score.reduce import TokenScores, chunk_positions, reduce_shard
from llamakit.score.texts import Window


def batches(wins: Iterable[Window], max_batch_size: int, max_batch_tokens: int) -> Iterator[list[Window]]:
    """Longest first (an out-of-memory shows at once, not hours in), each batch at most max_batch_size windows
    and max_batch_tokens padded tokens."""
    batch: list[Window] = []
    for w in sorted(wins, key=lambda w: (-len(w.tokens), w.key, w.part)):
        width = len(batch[0].tokens) if batch else len(w.tokens)
        if batch and (len(batch) + 1 > max_batch_size or (len(batch) + 1) * width > max_batch_tokens):
            yield batch
            batch = []
        batch.append(w)
    if batch:
        yield batch


class Scorer:
    """Scores windows with `model` (q) and optionally `reference` (p), both sharded over the same ranks."""

    def __init__(self, model: Transformer, reference: Transformer | None = None, max_batch_size: int = 32,
                 max_batch_tokens: int = 16384, group=None):
        self.model, self.reference = model, reference
        self.max_batch_size, self.max_batch_tokens = max_batch_size, max(max_batch_tokens, model.max_seq_len)
        rank, size = model_parallel_info()
        self.vocab_local = model.cfg.vocab_size // size
        self.vocab_start = rank * self.vocab_local
        self.chunk = chunk_positions(self.vocab_local)
        if group is None and size > 1:
            from fairscale.nn.model_parallel.initialize import get_model_parallel_group

            group = get_model_parallel_group()
        self.group = group

    @torch.inference_mode()
    def score_batch(self, batch: list[Window]) -> list[TokenScores]:
        """One forward for the batch (right-padded: causal attention keeps padding out of real positions)."""
        device = self.model.device
        t = max(len(w.tokens) for w in batch)
        if device.type == "cuda":  # fewer distinct shapes for cuBLAS/attention
            t = min(-(-t // 16) * 16, self.model.max_seq_len)
        tokens = torch.zeros((len(batch), t), dtype=torch.int64)
        rows, cols = [], []
        for i, w in enumerate(batch):
            tokens[i, : len(w.tokens)] = torch.tensor(w.tokens, dtype=torch.int64)
            rows += [i] * (w.hi - w.lo)
            cols += range(w.lo - 1, w.hi - 1)  # the logits at j - 1 predict token j
        tokens = tokens.to(device)
        r = torch.tensor(rows, dtype=torch.int64, device=device)
        c = torch.tensor(cols, dtype=torch.int64, device=device)
        targets = tokens[r, c + 1]
        h_q = self.model.hidden(tokens)[r, c]  # only the scored positions go on to the output layer
        h_p = self.reference.hidden(tokens)[r, c] if self.reference is not None else None
        parts = []
        for s in range(0, len(rows), self.chunk):
            q = self.model.logits_shard(h_q[s: s + self.chunk])
            p = self.reference.logits_shard(h_p[s: s + self.chunk]) if h_p is not None else None
            parts.append(reduce_shard(q, targets[s: s + self.chunk], self.vocab_start, self.group, p))
        scores = TokenScores.cat(parts).to_host()
        out, start = [], 0
        for w in batch:
            n = w.hi - w.lo
            out.append(TokenScores(*(getattr(scores, f)[start: start + n] for f in
                                     ("logprob", "rank", "entropy", "mu", "s2"))))
            start += n
        return out

    def score(self, wins: Iterable[Window]) -> Iterator[tuple[Window, TokenScores]]:
        for batch in batches(wins, self.max_batch_size, self.max_batch_tokens):
            yield from zip(batch, self.score_batch(batch))


def load_model(ckpt_dir: str, max_seq_len: int, dtype: str, device: str, quantize: str = "none") -> Transformer:
    """This rank's shard of a checkpoint as a model (no KV cache: scoring needs none)."""
    from llamakit.checkpoint.layout import DTYPES
    from llamakit.checkpoint.shards import open_checkpoint

    ckpt = open_checkpoint(ckpt_dir)
    rank, size = model_parallel_info()
    if size != ckpt.mp:
        raise RuntimeError(f"model-parallel size {size} != checkpoint shards {ckpt.mp} ({ckpt_dir})")
    dev = torch.device("cuda", torch.cuda.current_device()) if device == "cuda" else torch.device("cpu")
    shard = ckpt.load(rank)
    model = Transformer.from_shard(ckpt.config.with_vocab(ckpt.vocab_rows), shard, max_seq_len, DTYPES[dtype], dev,
                                   quantize, vocab_parallel=ckpt.vocab_parallel)
    del shard
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return model
