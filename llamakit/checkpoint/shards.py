"""Find and lazily open the `consolidated.NN.pth` shards of a Meta checkpoint folder, and check they agree."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llamakit.checkpoint import validate
from llamakit.checkpoint.layout import EMBEDDING, embedding_split, split_dim
from llamakit.checkpoint.params import ModelConfig, load_params
from llamakit.checkpoint.validate import SHARD_RE, load_shard  # noqa: F401 (their home is validate; callers import here)
from llamakit.errors import LlamakitError, Problem, raise_first


def new_checkpoint_dir(out_dir: str | Path) -> Path:
    """Create the folder a new checkpoint is written into; refuse one that already holds files."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise LlamakitError("output folder is not empty", "choose a new folder or empty this one", out.resolve())
    out.mkdir(parents=True, exist_ok=True)
    return out


def find_shards(ckpt_dir: str | Path) -> list[Path]:
    """Return the shard files in numeric order; a missing folder, no shards, or a gap is a LlamakitError."""
    probs: list[Problem] = []
    shards = validate.list_shards(Path(ckpt_dir), probs)
    raise_first(probs)
    return shards


@dataclass
class Checkpoint:
    """An opened checkpoint folder: its config, shard paths (MP = len(shards)) and per-shard key shapes."""

    path: Path
    config: ModelConfig
    shards: list[Path]
    shapes: list[dict[str, tuple[int, ...]]]
    dtypes: list[dict[str, torch.dtype]]

    @property
    def vocab_parallel(self) -> bool:
        """The embedding is split on the vocabulary (Llama 3's VocabParallelEmbedding), not on the embedding dim."""
        return embedding_split(self.config, self.shapes[0].get(EMBEDDING), self.mp)

    @property
    def mp(self) -> int:
        return len(self.shards)

    @property
    def has_rope_freqs(self) -> bool:
        return "rope.freqs" in self.shapes[0]

    @property
    def vocab_rows(self) -> int:
        """Rows of the embedding table = the vocabulary size the weights were trained with."""
        return self.full_shape(EMBEDDING)[0]

    def full_shape(self, key: str) -> tuple[int, ...]:
        """Shape of `key` once all shards are merged."""
        shape = list(self.shapes[0][key])
        dim = split_dim(key, self.vocab_parallel)
        if dim is not None:
            shape[dim] *= self.mp
        return tuple(shape)

    def load(self, rank: int) -> dict[str, torch.Tensor]:
        """Memory-map shard `rank` (0-based)."""
        return load_shard(self.shards[rank])


def open_checkpoint(ckpt_dir: str | Path) -> Checkpoint:
    """Find shards, read params.json, and check (llamakit.checkpoint.validate, the checks inspect lists) that every
    shard opens and holds the same known keys with the same shapes and dtypes; raise the first problem. (Shapes
    against params.json: the model's load names the first mismatching tensor; inspect lists them all.)"""
    ckpt_dir = Path(ckpt_dir)
    shards = find_shards(ckpt_dir)
    config = load_params(ckpt_dir)
    probs: list[Problem] = []
    scan = validate.scan_shards(shards, probs)
    raise_first(probs)
    validate.check_consistency(scan, probs)
    raise_first(probs)
    return Checkpoint(ckpt_dir, config, shards, scan.shapes, scan.dtypes)
