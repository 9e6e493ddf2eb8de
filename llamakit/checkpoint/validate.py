"""The one checkpoint-validation path: each step appends Problems (what, fix, where) to a list and goes on, so
`llamakit inspect` lists every problem of a folder while `open_checkpoint` (run, reshard, bench) raises the first.

Shards are opened memory-mapped: only the pickled key list is read, seconds even for 65B.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from llamakit.checkpoint.layout import EMBEDDING, embedding_split, expected_shapes, is_known
from llamakit.checkpoint.params import ModelConfig
from llamakit.errors import LlamakitError, Problem

SHARD_RE = re.compile(r"^consolidated\.(\d+)\.pth$")


def _add(probs: list[Problem], level: str, code: str, what: str, fix: str = "", where: object = None) -> None:
    probs.append(Problem(what, fix, str(where) if where is not None else None, None, level, code))


def describe_other_format(ckpt_dir: Path) -> str:
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


def list_shards(ckpt_dir: Path, probs: list[Problem]) -> list[Path]:
    """consolidated.NN.pth in numeric order; a missing folder, no shards (an HF folder, say) or a numbering gap
    is a problem (the shards found are still returned after a gap)."""
    if not ckpt_dir.is_dir():
        _add(probs, "error", "not-a-folder",
             "checkpoint folder does not exist" if not ckpt_dir.exists() else "checkpoint path is a file, not a folder",
             missing_folder_fix(ckpt_dir.resolve()) if not ckpt_dir.exists() else
             "pass the folder holding consolidated.NN.pth and params.json", ckpt_dir.resolve())
        return []
    numbered = sorted((int(m.group(1)), p) for p in ckpt_dir.iterdir() if (m := SHARD_RE.match(p.name)))
    if not numbered:
        names = {p.name for p in ckpt_dir.iterdir()}
        hf = "config.json" in names and any(n.endswith((".safetensors", ".bin")) for n in names)
        _add(probs, "error", "hf-checkpoint" if hf else "not-a-checkpoint",
             f"no consolidated.NN.pth shards here; {describe_other_format(ckpt_dir)}",
             "point to a Meta-format folder such as /data/LLaMA/13B", ckpt_dir.resolve())
        return []
    indices = [i for i, _ in numbered]
    gaps = sorted(set(range(max(indices) + 1)) - set(indices))
    if gaps:
        _add(probs, "error", "shard-missing",
             f"shard numbering has a gap: missing {', '.join(f'consolidated.{i:02d}.pth' for i in gaps)}",
             "copy the missing shard(s) from the original download", ckpt_dir.resolve())
    return [p for _, p in numbered]


def load_shard(path: str | Path) -> dict[str, torch.Tensor]:
    """Open one shard memory-mapped, weights only: nothing is read from disk until a tensor is used."""
    path = Path(path)
    try:
        sd = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises RuntimeError/EOFError/UnpicklingError/zipfile errors on damaged files
        size = path.stat().st_size if path.exists() else 0
        raise LlamakitError(f"cannot read shard ({type(e).__name__}: {str(e).splitlines()[0][:120]}; "
                            f"{size} bytes on disk)",
                            "the file is truncated or damaged: copy it again and check it with "
                            "`llamakit inspect --verify`", path) from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise LlamakitError("shard is not a dict of tensors",
                            "this is not a Meta LLaMA shard; use the original consolidated.NN.pth", path)
    return sd


@dataclass
class ShardFile:
    name: str
    bytes: int
    keys: int | None  # None when the file could not be opened
    readable: bool


@dataclass
class Scan:
    """What the mmap'd shards hold: per readable shard its keys' shapes and dtypes."""

    files: list[ShardFile] = field(default_factory=list)
    shapes: list[dict[str, tuple[int, ...]]] = field(default_factory=list)
    dtypes: list[dict[str, torch.dtype]] = field(default_factory=list)
    readable: list[Path] = field(default_factory=list)


def scan_shards(shards: list[Path], probs: list[Problem]) -> Scan:
    """Open every shard memory-mapped (no tensor data is read) and record key shapes and dtypes."""
    scan = Scan()
    for p in shards:
        size = p.stat().st_size
        try:
            sd = load_shard(p)
        except LlamakitError as e:
            probs.append(e.problem("shard-unreadable"))
            scan.files.append(ShardFile(p.name, size, None, False))
            continue
        scan.shapes.append({k: tuple(v.shape) for k, v in sd.items()})
        scan.dtypes.append({k: v.dtype for k, v in sd.items()})
        scan.readable.append(p)
        scan.files.append(ShardFile(p.name, size, len(sd), True))
        del sd
    return scan


def check_consistency(scan: Scan, probs: list[Problem]) -> bool:
    """Every shard must hold the same keys with the same shapes and dtypes, and only LLaMA keys."""
    first, name0 = scan.shapes[0], scan.readable[0].name
    ok = True
    unknown = sorted(k for k in first if not is_known(k))
    if unknown:
        ok = False
        _add(probs, "error", "unknown-keys",
             f"shard holds key(s) that are not LLaMA weights: {', '.join(unknown[:4])}"
             f"{' ...' if len(unknown) > 4 else ''}",
             "this is not a Meta LLaMA checkpoint (or other software saved it); use the original files",
             scan.readable[0])
    for path, sh, dt in zip(scan.readable[1:], scan.shapes[1:], scan.dtypes[1:]):
        diff = sorted(set(sh) ^ set(first))
        bad_shape = next((k for k in sh if k in first and sh[k] != first[k]), None)
        bad_dtype = next((k for k in dt if k in scan.dtypes[0] and dt[k] != scan.dtypes[0][k]), None)
        if diff:
            what = f"keys differ from {name0} (e.g. {diff[0]}; {len(diff)} in all)"
        elif bad_shape:
            what = f"{bad_shape} has shape {list(sh[bad_shape])} but {name0} has {list(first[bad_shape])}"
        elif bad_dtype:
            what = f"{bad_dtype} is {dt[bad_dtype]} but {name0} has {scan.dtypes[0][bad_dtype]}"
        else:
            continue
        ok = False
        _add(probs, "error", "shards-inconsistent", what,
             "all shards must come from the same download; copy this shard again", path)
    return ok


def shape_diffs(expected: dict[str, tuple[int, ...]], actual: dict[str, tuple[int, ...]]) -> list[str]:
    """Human-readable differences between the shapes params.json implies and a shard's shapes."""
    out = [f"{k} is missing" for k in expected if k not in actual]
    out += [f"{k} is not expected" for k in actual if k not in expected and is_known(k)]
    out += [f"{k} is {list(actual[k])}, params.json implies {list(s)}"
            for k, s in expected.items() if k in actual and actual[k] != s]
    return out


def check_against_params(config: ModelConfig | None, shapes: dict[str, tuple[int, ...]], n_files: int, rope: bool,
                         where: Path, probs: list[Problem]) -> tuple[bool | None, int | None]:
    """Shapes vs params.json at the found MP; if they match another MP instead, shards are missing.
    Returns (they match (None without params), the MP the shapes were cut for or None)."""
    if "tok_embeddings.weight" not in shapes:
        _add(probs, "error", "params-mismatch", "shard has no tok_embeddings.weight",
             "this is not a complete LLaMA shard; copy it again", where)
        return False, None
    if config is None:  # no readable params.json: nothing to compare with (that is its own problem)
        return None, n_files
    vp = embedding_split(config, shapes[EMBEDDING], n_files)  # Llama 3: split by vocabulary
    vocab = shapes[EMBEDDING][0] * (n_files if vp else 1)
    ok = True
    if config.vocab_size > 0 and config.vocab_size != vocab:
        ok = False
        _add(probs, "error", "vocab-mismatch",
             f"params.json says vocab_size {config.vocab_size} but the embedding has {vocab} rows",
             "params.json does not belong to these shards: restore it from the original download",
             where.parent / "params.json")
    diffs = shape_diffs(expected_shapes(config, vocab, n_files, rope, vp), shapes)
    if not diffs:
        return ok, n_files
    for mp in config.allowed_mp(vocab):
        rows = shapes[EMBEDDING][0] * (mp if vp else 1)  # the vocabulary if the shards were cut for `mp`
        if mp != n_files and not shape_diffs(expected_shapes(config, rows, mp, rope, vp), shapes):
            missing = [f"consolidated.{i:02d}.pth" for i in range(mp)
                       if not (where.parent / f"consolidated.{i:02d}.pth").exists()]
            _add(probs, "error", "shard-count",
                 f"the shards are cut for MP {mp} but {n_files} found"
                 + (f" (missing {', '.join(missing)})" if missing else ""),
                 "copy the missing shard(s) from the original download", where.parent)
            return False, mp
    _add(probs, "error", "params-mismatch",
         f"{len(diffs)} shape(s) disagree with params.json: {'; '.join(diffs[:3])}"
         f"{' ...' if len(diffs) > 3 else ''}",
         "params.json does not belong to these shards (was it edited?): restore it from the original download",
         where.parent / "params.json")
    return False, None
