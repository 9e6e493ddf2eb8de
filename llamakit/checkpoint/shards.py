"""Find and lazily open the `consolidated.NN.pth` shards of a Meta checkpoint folder, and check they agree."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from llamakit.checkpoint.layout import is_known, split_dim
from llamakit.checkpoint.params import ModelConfig, load_params
from llamakit.errors import LlamakitError

SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")


def _describe_other_format(ckpt_dir: Path) -> str:
    """Say what a folder without Meta shards holds instead (HF, safetensors, GGUF...)."""
    names = {p.name for p in ckpt_dir.iterdir()} if ckpt_dir.is_dir() else set()
    if "config.json" in names and any(n.endswith(".safetensors") or n.startswith("pytorch_model") for n in names):
        return "this is a Hugging Face (transformers) checkpoint (config.json + safetensors/bin), not Meta format"
    if any(n.endswith(".safetensors") for n in names):
        return "it holds .safetensors files, not Meta's consolidated.NN.pth"
    if any(n.endswith(".gguf") for n in names):
        return "it holds a GGUF (llama.cpp) file, not Meta's consolidated.NN.pth"
    shown = sorted(names)[:6]
    return f"it holds {', '.join(shown) + (' ...' if len(names) > 6 else '') if shown else 'nothing'}"


def new_checkpoint_dir(out_dir: str | Path) -> Path:
    """Create the folder a new checkpoint is written into; refuse one that already holds files."""
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise LlamakitError("output folder is not empty", "choose a new folder or empty this one", out.resolve())
    out.mkdir(parents=True, exist_ok=True)
    return out


def missing_folder_fix(path: Path) -> str:
    """What to do about a checkpoint folder that is not there: the checkpoints next to it, or, when its parent is
    missing too (a recipe written for another machine), where to point ckpt_dir - never the same missing path."""
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    try:
        near = sorted(p.name for p in parent.iterdir() if (p / "params.json").is_file())[:6]
    except OSError:
        near = []
    if near:
        return f"checkpoints in {parent}: {', '.join(near)}; use one of them"
    if parent != path.parent:
        return (f"{path.parent} does not exist on this machine (a recipe written for another one?): give "
                "the folder holding consolidated.NN.pth and params.json (`llamakit run demo` runs the built-in model)")
    return f"no checkpoint in {parent}: give the folder holding consolidated.NN.pth and params.json"


def find_shards(ckpt_dir: str | Path) -> list[Path]:
    """Return the shard files in numeric order; a missing folder, no shards, or a gap is a LlamakitError."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.exists():
        raise LlamakitError("checkpoint folder does not exist", missing_folder_fix(ckpt_dir.resolve()),
                            ckpt_dir.resolve())
    if not ckpt_dir.is_dir():
        raise LlamakitError("checkpoint path is a file, not a folder",
                            "pass the folder holding consolidated.NN.pth and params.json", ckpt_dir.resolve())
    numbered = []
    for p in ckpt_dir.iterdir():
        m = SHARD_RE.match(p.name)
        if m:
            numbered.append((int(m.group(1)), p))
    if not numbered:
        raise LlamakitError(f"no consolidated.NN.pth shards here; {_describe_other_format(ckpt_dir)}",
                            "point to a Meta-format folder such as /data/LLaMA/13B", ckpt_dir.resolve())
    numbered.sort()
    indices = [i for i, _ in numbered]
    expected = list(range(len(numbered)))
    if indices != expected:
        missing = sorted(set(range(max(indices) + 1)) - set(indices))
        raise LlamakitError(f"shard numbering has a gap: missing {', '.join(f'consolidated.{i:02d}.pth' for i in missing)}",
                            "copy the missing shard(s) from the original download", ckpt_dir.resolve())
    return [p for _, p in numbered]


def load_shard(path: str | Path) -> dict[str, torch.Tensor]:
    """Open one shard memory-mapped, weights only: nothing is read from disk until a tensor is used."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError/zipfile errors on damaged files
        size = path.stat().st_size if path.exists() else 0
        raise LlamakitError(f"cannot read shard ({type(e).__name__}: {str(e).splitlines()[0][:120]}; "
                            f"{size} bytes on disk)",
                            "the file is truncated or damaged: copy it again and check it with "
                            "`llamakit inspect --verify`", path) from None


@dataclass
class Checkpoint:
    """An opened checkpoint folder: its config, shard paths (MP = len(shards)) and per-shard key shapes."""

    path: Path
    config: ModelConfig
    shards: list[Path]
    shapes: list[dict[str, tuple[int, ...]]]
    dtypes: list[dict[str, torch.dtype]]

    @property
    def mp(self) -> int:
        return len(self.shards)

    @property
    def has_rope_freqs(self) -> bool:
        return "rope.freqs" in self.shapes[0]

    @property
    def vocab_rows(self) -> int:
        """Rows of the embedding table = the vocabulary size the weights were trained with."""
        return self.shapes[0]["tok_embeddings.weight"][0]

    def full_shape(self, key: str) -> tuple[int, ...]:
        """Shape of `key` once all shards are merged."""
        shape = list(self.shapes[0][key])
        dim = split_dim(key)
        if dim is not None:
            shape[dim] *= self.mp
        return tuple(shape)

    def load(self, rank: int) -> dict[str, torch.Tensor]:
        """Memory-map shard `rank` (0-based)."""
        return load_shard(self.shards[rank])


def open_checkpoint(ckpt_dir: str | Path) -> Checkpoint:
    """Find shards, read params.json and check every shard has the same keys, the same shapes and known keys."""
    ckpt_dir = Path(ckpt_dir)
    shards = find_shards(ckpt_dir)
    config = load_params(ckpt_dir)
    shapes: list[dict[str, tuple[int, ...]]] = []
    dtypes: list[dict[str, torch.dtype]] = []
    for path in shards:
        sd = load_shard(path)
        shapes.append({k: tuple(v.shape) for k, v in sd.items()})
        dtypes.append({k: v.dtype for k, v in sd.items()})
        del sd
    first = shapes[0]
    unknown = sorted(k for k in first if not is_known(k))
    if unknown:
        raise LlamakitError(f"shard holds key(s) that are not LLaMA weights: {', '.join(unknown[:4])}"
                            f"{' ...' if len(unknown) > 4 else ''}",
                            "this is not a Meta LLaMA checkpoint (or it was saved by other software); "
                            "use the original consolidated.NN.pth files", shards[0])
    for path, sh in zip(shards[1:], shapes[1:]):
        if set(sh) != set(first):
            diff = sorted(set(sh) ^ set(first))
            raise LlamakitError(f"keys differ from {shards[0].name} (e.g. {diff[0]})",
                                "all shards must come from the same download; copy this shard again", path)
        for k, s in sh.items():
            if s != first[k]:
                raise LlamakitError(f"{k} has shape {list(s)} but {shards[0].name} has {list(first[k])}",
                                    "all shards must come from the same download; copy this shard again", path)
    return Checkpoint(ckpt_dir, config, shards, shapes, dtypes)
