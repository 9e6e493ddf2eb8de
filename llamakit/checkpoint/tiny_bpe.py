"""A tiny Llama 3 style tokenizer.model for make-tiny: byte-level BPE learned from the bundled text, written in
Meta's tiktoken format (base64 token + rank per line); nothing is downloaded."""

from __future__ import annotations

import base64
from collections import Counter
from functools import lru_cache
from pathlib import Path

from llamakit.data import asset_path
from llamakit.tokenizer import LLAMA3_PATTERN

TINY_MERGES = 128  # 256 bytes + 128 merges = 384 base tokens; with the 256 specials the vocabulary is 640


def train_bpe(text: str, merges: int = TINY_MERGES) -> dict[bytes, int]:
    """Ranks of a byte-level BPE: the 256 single bytes, then the most frequent adjacent pair of each round
    (ties: the smallest pair), within the pieces Meta's split pattern cuts `text` into."""
    import regex  # tiktoken's own dependency; the stdlib re lacks \\p{L}

    words = Counter(tuple(bytes([b]) for b in piece.encode("utf-8")) for piece in regex.findall(LLAMA3_PATTERN, text))
    ranks = {bytes([i]): i for i in range(256)}
    while len(ranks) < 256 + merges:
        pairs: Counter[tuple[bytes, bytes]] = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                if pair[0] + pair[1] not in ranks:
                    pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        ranks[best[0] + best[1]] = len(ranks)
        merged: Counter[tuple[bytes, ...]] = Counter()
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == best:
                    out.append(word[i] + word[i + 1])
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] += n
        words = merged
    return ranks


def write_bpe_file(ranks: dict[bytes, int], path: Path) -> None:
    """Meta's tokenizer.model format for Llama 3: one `base64(token) rank` line per token, by rank."""
    lines = [f"{base64.b64encode(tok).decode('ascii')} {rank}" for tok, rank in sorted(ranks.items(), key=lambda x: x[1])]
    path.write_text("\n".join(lines) + "\n", encoding="ascii")


@lru_cache(maxsize=4)
def _trained(text: str) -> dict[bytes, int]:
    return train_bpe(text)


def write_tiny_tiktoken(path: Path, corpus: Path | None = None) -> int:
    """Write a tiny Llama 3 tokenizer.model learned from the bundled corpus; returns its vocabulary size
    (base tokens + 256 specials)."""
    ranks = _trained((corpus or asset_path("corpus.txt")).read_text(encoding="utf-8"))
    write_bpe_file(ranks, path)
    return len(ranks) + 256
