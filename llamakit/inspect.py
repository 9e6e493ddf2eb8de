"""`llamakit inspect` as a pure function: checkpoint folder -> InspectReport (params, shapes, shards, md5, memory).

The report collects problems (Findings, each with its fix) instead of stopping at the first one, so the rest of
the report is still there. Shards are opened memory-mapped, so only the pickled key list is read from disk:
seconds even for 65B. Only `verify=True` reads every byte (md5 against checklist.chk).
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import types
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Callable, Union, get_args, get_origin, get_type_hints

import torch

from llamakit import defaults
from llamakit.checkpoint.layout import DTYPES, expected_shapes, is_known, split_dim
from llamakit.checkpoint.params import ModelConfig, identify, load_params
from llamakit.checkpoint.shards import SHARD_RE, find_shards, load_shard
from llamakit.errors import LlamakitError
from llamakit.gpus import GpuInfo, detect_gpus
from llamakit.fit import CARD_SIZES_GB, FitOption, card_bytes, fit_options, reshard_command, resolve_dtype, verdict
from llamakit.memory import DTYPE_BYTES, GiB, plan_memory, weight_dtype
from llamakit.tokenizer import Tokenizer, find_tokenizer

SCHEMA = "llamakit.inspect/1"
DEFAULT_BATCH, DEFAULT_SEQ, DEFAULT_DTYPE = defaults.MAX_BATCH_SIZE, defaults.MAX_SEQ_LEN, defaults.DTYPE
TORCH_DTYPES = {t: name for name, t in DTYPES.items()}
ProgressFn = Callable[[str, int, int], None]  # (file name, bytes done over all files, bytes total)


# ----------------------------------------------------------------------------------------------- the report
@dataclass
class Finding:
    """One problem: level 'error' (exit non-zero) or 'warning', a stable code, what is wrong and the fix."""

    level: str
    code: str
    what: str
    fix: str = ""
    where: str | None = None

    def one_line(self) -> str:
        return LlamakitError(self.what, self.fix, self.where).one_line()


@dataclass
class ModelInfo:
    """What the model is; architecture fields from params.json, counts and dtype from the shard shapes."""

    name: str | None  # "LLaMA-1 13B", "Llama-2 70B", "custom"; None without a readable params.json
    param_count: int  # exact, from the shard shapes (rope.freqs is a buffer, not counted)
    param_count_params: int | None  # what params.json + the embedding rows imply (equal when all is well)
    dim: int | None
    n_layers: int | None
    n_heads: int | None
    n_kv_heads: int | None  # effective: = n_heads without GQA
    head_dim: int | None
    gqa_groups: int | None
    ffn_hidden: int | None
    vocab_size: int | None  # rows of tok_embeddings.weight
    dtype: str | None  # on disk: bf16 / fp16 / fp32 / "mixed (...)"
    allowed_mp: list[int] = field(default_factory=list)


@dataclass
class ShardFile:
    name: str
    bytes: int
    keys: int | None  # None when the file could not be opened
    readable: bool


@dataclass
class ShardsInfo:
    """The consolidated.NN.pth files: count (= MP), sizes, and whether their keys and shapes agree."""

    mp: int  # number of shard files found
    expected_mp: int | None  # the MP the shapes were cut for (differs from mp when shards are missing)
    files: list[ShardFile]
    total_bytes: int
    rope_freqs: bool
    consistent: bool  # same keys, shapes, dtypes in every shard
    matches_params: bool | None  # shapes == expected_shapes(params.json); None without params.json
    split: dict[str, int | None]  # key pattern -> dimension split across shards (None = copied to every shard)


@dataclass
class TokenizerInfo:
    path: str
    n_words: int
    bos_id: int
    eos_id: int
    pad_id: int
    matches_embedding: bool | None


@dataclass
class FileCheck:
    name: str
    expected_md5: str
    md5: str | None  # None: file missing
    ok: bool


@dataclass
class ChecklistInfo:
    """checklist.chk: which files it lists, which are missing or extra, and (with verify) the md5 results."""

    path: str | None
    listed: list[str]
    missing: list[str]
    extra: list[str]
    verified: bool
    files: list[FileCheck] = field(default_factory=list)
    ok: bool | None = None  # None until verified


@dataclass
class GpuView:
    index: int
    name: str
    total_bytes: int
    free_bytes: int


@dataclass
class MemoryInfo:
    """The per-GPU plan at the checkpoint's MP, whether it fits this machine, and what would."""

    dtype: str
    batch: int
    seq: int
    mp: int
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    total_bytes: int
    gpus: list[GpuView]
    fits_here: bool | None  # None: no GPU detected
    max_batch_here: int | None
    options: list[FitOption]
    advice: list[str]


@dataclass
class InspectReport:
    """Everything `llamakit inspect` shows; `to_json()` is the --json output (field names are stable)."""

    path: str
    schema: str = SCHEMA
    params: dict[str, Any] | None = None
    model: ModelInfo | None = None
    shards: ShardsInfo | None = None
    tokenizer: TokenizerInfo | None = None
    checklist: ChecklistInfo | None = None
    memory: MemoryInfo | None = None
    problems: list[Finding] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def errors(self) -> list[Finding]:
        return [p for p in self.problems if p.level == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "InspectReport":
        return _build(cls, data)

    @classmethod
    def from_json(cls, text: str) -> "InspectReport":
        return cls.from_dict(json.loads(text))


def _build(tp: Any, value: Any) -> Any:
    """Rebuild nested dataclasses from their asdict() form (the inverse of to_dict; extra keys are ignored)."""
    if value is None:
        return None
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(tp) if a is not type(None)]
        return _build(args[0], value) if len(args) == 1 else value
    if origin is list:
        return [_build(get_args(tp)[0], v) for v in value]
    if origin is dict:
        return dict(value)
    if is_dataclass(tp):
        hints = get_type_hints(tp)
        return tp(**{f.name: _build(hints[f.name], value[f.name]) for f in fields(tp) if f.name in value})
    return value


# ----------------------------------------------------------------------------------------------- the steps
def _problem(probs: list[Finding], level: str, code: str, what: str, fix: str = "", where: Any = None) -> None:
    probs.append(Finding(level, code, what, fix, str(where) if where is not None else None))


def _from_error(probs: list[Finding], code: str, e: LlamakitError, level: str = "error") -> None:
    probs.append(Finding(level, code, e.what, e.fix, e.where))


def _read_params(path: Path, probs: list[Finding]) -> tuple[dict[str, Any] | None, ModelConfig | None]:
    """params.json as raw JSON (for the table, if it parses) and as a validated config (None if invalid)."""
    raw = None
    try:
        raw = json.loads((path / "params.json").read_text(encoding="utf-8"))
    except Exception:  # reported precisely by load_params below
        pass
    try:
        config = load_params(path)
    except LlamakitError as e:
        _from_error(probs, "params-missing" if "missing" in e.what else "params-invalid", e)
        return (raw if isinstance(raw, dict) else None), None
    return raw, config


def _shard_files(path: Path, probs: list[Finding]) -> list[Path]:
    """consolidated.NN.pth in numeric order; no shards (an HF folder, say) or a numbering gap is a finding."""
    numbered = sorted((int(m.group(1)), p) for p in path.iterdir() if (m := SHARD_RE.match(p.name)))
    if not numbered:
        try:
            find_shards(path)  # raises with a description of what the folder holds instead
        except LlamakitError as e:
            names = {p.name for p in path.iterdir()}
            hf = "config.json" in names and any(n.endswith((".safetensors", ".bin")) for n in names)
            _from_error(probs, "hf-checkpoint" if hf else "not-a-checkpoint", e)
        return []
    indices = [i for i, _ in numbered]
    gaps = sorted(set(range(max(indices) + 1)) - set(indices))
    if gaps:
        _problem(probs, "error", "shard-missing",
                 f"shard numbering has a gap: missing {', '.join(f'consolidated.{i:02d}.pth' for i in gaps)}",
                 "copy the missing shard(s) from the original download", path)
    return [p for _, p in numbered]


@dataclass
class _Scan:
    """What the mmap'd shards hold: per readable shard its keys' shapes and dtypes."""

    files: list[ShardFile]
    shapes: list[dict[str, tuple[int, ...]]]
    dtypes: list[dict[str, torch.dtype]]
    readable: list[Path]


def _scan_shards(shards: list[Path], probs: list[Finding]) -> _Scan:
    """Open every shard memory-mapped (no tensor data is read) and record key shapes and dtypes."""
    scan = _Scan([], [], [], [])
    for p in shards:
        size = p.stat().st_size
        try:
            sd = load_shard(p)
            if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
                raise LlamakitError("shard is not a dict of tensors",
                                    "this is not a Meta LLaMA shard; use the original consolidated.NN.pth", p)
        except LlamakitError as e:
            _from_error(probs, "shard-unreadable", e)
            scan.files.append(ShardFile(p.name, size, None, False))
            continue
        scan.shapes.append({k: tuple(v.shape) for k, v in sd.items()})
        scan.dtypes.append({k: v.dtype for k, v in sd.items()})
        scan.readable.append(p)
        scan.files.append(ShardFile(p.name, size, len(sd), True))
        del sd
    return scan


def _check_consistency(scan: _Scan, probs: list[Finding]) -> bool:
    """Every shard must hold the same keys with the same shapes and dtypes, and only LLaMA keys."""
    first, name0 = scan.shapes[0], scan.readable[0].name
    ok = True
    unknown = sorted(k for k in first if not is_known(k))
    if unknown:
        ok = False
        _problem(probs, "error", "unknown-keys",
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
        _problem(probs, "error", "shards-inconsistent", what,
                 "all shards must come from the same download; copy this shard again", path)
    return ok


def _shape_diffs(expected: dict[str, tuple[int, ...]], actual: dict[str, tuple[int, ...]]) -> list[str]:
    """Human-readable differences between the shapes params.json implies and a shard's shapes."""
    out = [f"{k} is missing" for k in expected if k not in actual]
    out += [f"{k} is not expected" for k in actual if k not in expected and is_known(k)]
    out += [f"{k} is {list(actual[k])}, params.json implies {list(s)}"
            for k, s in expected.items() if k in actual and actual[k] != s]
    return out


def _check_against_params(config: ModelConfig, shapes: dict[str, tuple[int, ...]], n_files: int, rope: bool,
                          where: Path, probs: list[Finding]) -> tuple[bool, int | None]:
    """Shapes vs params.json at the found MP; if they match another MP instead, shards are missing."""
    vocab = shapes["tok_embeddings.weight"][0]
    ok = True
    if config.vocab_size > 0 and config.vocab_size != vocab:
        ok = False
        _problem(probs, "error", "vocab-mismatch",
                 f"params.json says vocab_size {config.vocab_size} but the embedding has {vocab} rows",
                 "params.json does not belong to these shards: restore it from the original download",
                 where.parent / "params.json")
    diffs = _shape_diffs(expected_shapes(config, vocab, n_files, rope), shapes)
    if not diffs:
        return ok, n_files
    for mp in config.allowed_mp(vocab):
        if mp != n_files and not _shape_diffs(expected_shapes(config, vocab, mp, rope), shapes):
            missing = [f"consolidated.{i:02d}.pth" for i in range(mp) if not (where.parent /
                                                                               f"consolidated.{i:02d}.pth").exists()]
            _problem(probs, "error", "shard-count",
                     f"the shards are cut for MP {mp} but {n_files} found"
                     + (f" (missing {', '.join(missing)})" if missing else ""),
                     "copy the missing shard(s) from the original download", where.parent)
            return False, mp
    _problem(probs, "error", "params-mismatch",
             f"{len(diffs)} shape(s) disagree with params.json: {'; '.join(diffs[:3])}"
             f"{' ...' if len(diffs) > 3 else ''}",
             "params.json does not belong to these shards (was it edited?): restore it from the original download",
             where.parent / "params.json")
    return False, None


def _split_patterns(shapes: dict[str, tuple[int, ...]]) -> dict[str, int | None]:
    """Split dimension per key pattern (layers.N collapsed to layers.*), in the shard's order."""
    out: dict[str, int | None] = {}
    for k in shapes:
        if is_known(k):
            out.setdefault(re.sub(r"^layers\.\d+\.", "layers.*.", k), split_dim(k))
    return out


def _count_params(shapes: dict[str, tuple[int, ...]], mp: int) -> int:
    """Exact parameter count of the merged model from one shard's shapes (split keys times MP)."""
    total = 0
    for k, s in shapes.items():
        if k == "rope.freqs" or not is_known(k):
            continue
        n = 1
        for d in s:
            n *= d
        total += n * (mp if split_dim(k) is not None else 1)
    return total


def _disk_dtype(dtypes: dict[str, torch.dtype]) -> str:
    names = sorted({TORCH_DTYPES.get(t, str(t).replace("torch.", "")) for k, t in dtypes.items() if k != "rope.freqs"})
    return names[0] if len(names) == 1 else f"mixed ({', '.join(names)})"


def _model_info(config: ModelConfig | None, shapes: dict[str, tuple[int, ...]] | None,
                dtypes: dict[str, torch.dtype] | None, mp: int) -> ModelInfo | None:
    if config is None and shapes is None:
        return None
    vocab = shapes["tok_embeddings.weight"][0] if shapes and "tok_embeddings.weight" in shapes else None
    if vocab is None and config is not None and config.vocab_size > 0:
        vocab = config.vocab_size
    count = _count_params(shapes, mp) if shapes else 0
    if config is None:  # what the shapes alone tell
        assert shapes is not None
        dim = shapes["norm.weight"][0] if "norm.weight" in shapes else None
        n_layers = len({k.split(".")[1] for k in shapes if k.startswith("layers.")})
        w1 = shapes.get("layers.0.feed_forward.w1.weight")
        return ModelInfo(None, count, None, dim, n_layers, None, None, None, None,
                         w1[0] * mp if w1 else None, vocab, _disk_dtype(dtypes or {}))
    return ModelInfo(
        name=identify(config), param_count=count,
        param_count_params=config.param_count(vocab) if vocab else None,
        dim=config.dim, n_layers=config.n_layers, n_heads=config.n_heads, n_kv_heads=config.kv_heads,
        head_dim=config.head_dim, gqa_groups=config.gqa_groups, ffn_hidden=config.ffn_hidden, vocab_size=vocab,
        dtype=_disk_dtype(dtypes) if dtypes else None,
        allowed_mp=[m for m in config.allowed_mp(vocab or -1) if m <= 8])


def _tokenizer_info(path: Path, explicit: str | Path | None, vocab: int | None,
                    probs: list[Finding]) -> TokenizerInfo | None:
    try:
        tok_path = find_tokenizer(path, explicit)
        tok = Tokenizer(tok_path)
    except LlamakitError as e:
        missing = "no tokenizer" in e.what or "does not exist" in e.what
        _from_error(probs, "tokenizer-missing" if missing else "tokenizer-invalid", e,
                    "warning" if missing and not explicit else "error")
        return None
    matches = None if vocab is None else tok.n_words == vocab
    if matches is False:
        _problem(probs, "error", "tokenizer-vocab-mismatch",
                 f"tokenizer has {tok.n_words} tokens but the embedding has {vocab} rows",
                 "use the tokenizer.model that came with this model (Meta's has 32000)", tok_path)
    return TokenizerInfo(str(tok_path), tok.n_words, tok.bos_id, tok.eos_id, tok.pad_id, matches)


_CHK_LINE = re.compile(r"^([0-9a-fA-F]{32})\s+\*?(?:\./)?(.+?)\s*$")


def md5_stream(path: Path, on_bytes: Callable[[int], None] | None = None, chunk: int = 8 << 20) -> str:
    """md5 of a file read in chunks, reporting each chunk's size (for a progress bar)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            if on_bytes:
                on_bytes(len(block))
    return h.hexdigest()


def _checklist(path: Path, verify: bool, progress: ProgressFn | None, probs: list[Finding]) -> ChecklistInfo | None:
    """Compare the folder with checklist.chk (names always; md5 of every byte only with verify)."""
    chk = path / "checklist.chk"
    if not chk.is_file():
        if verify:
            _problem(probs, "warning", "no-checklist", "no checklist.chk: nothing to verify against",
                     "copy checklist.chk from the original download (Meta ships one per model folder)", path)
        return None
    expected: dict[str, str] = {}
    for lineno, line in enumerate(chk.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        m = _CHK_LINE.match(line)
        if not m:
            _problem(probs, "warning", "checklist-malformed", "line is not `md5  filename`",
                     "restore checklist.chk from the original download", f"{chk}:{lineno}")
            continue
        expected[m.group(2)] = m.group(1).lower()
    missing = [n for n in expected if not (path / n).is_file()]
    on_disk = sorted(p.name for p in path.iterdir() if p.is_file() and p.name != "checklist.chk")
    extra = [n for n in on_disk if n not in expected]
    if missing:
        _problem(probs, "error", "file-missing", f"listed in checklist.chk but missing: {', '.join(missing)}",
                 "copy the missing file(s) from the original download", path)
    for n in extra:
        if SHARD_RE.match(n) or n == "params.json":
            _problem(probs, "warning", "file-extra", f"{n} is not listed in checklist.chk",
                     "remove it if it does not belong to this model, or use the checklist of its download",
                     path / n)
    info = ChecklistInfo(str(chk), list(expected), missing, extra, verify)
    if not verify:
        return info
    total = sum((path / n).stat().st_size for n in expected if n not in missing)
    done = 0

    def tick(n: int) -> None:
        nonlocal done
        done += n
        if progress:
            progress(current, done, total)

    for name, want in expected.items():
        if name in missing:
            info.files.append(FileCheck(name, want, None, False))
            continue
        current = name
        got = md5_stream(path / name, tick)
        info.files.append(FileCheck(name, want, got, got == want))
        if got != want:
            _problem(probs, "error", "md5-mismatch",
                     "md5 differs from checklist.chk: the file is damaged or from another download",
                     "copy it again from the original download", path / name)
    info.ok = all(f.ok for f in info.files)
    return info


# ----------------------------------------------------------------------------------------------- memory
def fit_summary(options: list[FitOption], dtype: str, mp: int | None = None) -> str:
    """'needs 1x 40 GB or 2x 24 GB at bf16' (or that no listed card count and size is enough); with the
    checkpoint's `mp`, a GPU count other than it says that it holds after a reshard to that MP."""
    opts = [o for o in options if o.dtype == dtype]
    if not opts:
        return f"at {dtype} it does not fit on 8 GPUs of {CARD_SIZES_GB[-1]} GB"

    def reshard(o: FitOption) -> str:
        return f" after a reshard to MP={o.gpus}" if mp is not None and o.gpus != mp else ""

    first = opts[0]
    if first.gpus == 1 and first.per_gpu_bytes <= card_bytes(CARD_SIZES_GB[0]) // 2:
        # far below the smallest listed card: naming "16 GB" would mislead (the demo model needs 1.5 GiB)
        return f"needs 1 GPU with {_gib(first.per_gpu_bytes)} free at {dtype}{reshard(first)}"
    return "needs " + " or ".join(f"{o.gpus}x {o.gpu_gb} GB{reshard(o)}" for o in opts) + f" at {dtype}"


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def memory_info(config: ModelConfig, vocab: int, mp: int, dtype: str, batch: int, seq: int,
                gpus: list[GpuInfo], ckpt: str) -> MemoryInfo:
    """The plan at the checkpoint's MP and llamakit.fit's verdict for this machine, in inspect's words."""
    plan = plan_memory(config, vocab, mp, dtype, batch, seq)
    views = [GpuView(g.index, g.name, g.total_bytes, g.free_bytes) for g in gpus]
    options = fit_options(config, vocab, dtype, batch, seq)
    advice: list[str] = []
    fits_here: bool | None = None
    max_batch: int | None = None
    if not gpus:
        advice.append("no NVIDIA GPU detected on this machine (NVML), so no verdict for here")
    else:
        n, smallest = len(gpus), min(g.total_bytes for g in gpus)
        card = f"{gpus[0].name} ({_gib(smallest)})"
        v = verdict(config, vocab, mp, dtype, batch, seq, smallest, n)
        fits_here = v.fits
        max_batch = v.max_batch if mp <= n else None
        if fits_here:
            line = f"fits: {_gib(plan.total)} per GPU at MP {mp} on {card}; "
            copies = n // mp
            if copies > 1:
                line += (f"{copies} data-parallel copies use {copies * mp} GPUs "
                         f"(torchrun --nproc_per_node {copies * mp}; Meta's own scripts: {mp})")
            else:
                line += f"run with torchrun --nproc_per_node {mp}"
            advice.append(line + f"; batch up to {max_batch} fits at seq {seq}")
        else:
            if mp > n:
                advice.append(f"this checkpoint has MP {mp}, so it needs {mp} GPUs; this machine has {n}")
            else:
                advice.append(f"MP {mp} at {dtype} needs {_gib(plan.total)} per GPU; {card} is too small")
                if max_batch:
                    advice.append(f"lower --batch to {max_batch} (or --seq) and it fits")
            advice.extend(_fix_words(v, config, vocab, dtype, batch, seq, ckpt))
    if dtype != "int8":  # int8 options only where they beat every option at the chosen dtype
        options += [o for o in fit_options(config, vocab, "int8", batch, seq)
                    if not any(c.gpus <= o.gpus and c.gpu_gb <= o.gpu_gb for c in options)]
    return MemoryInfo(dtype, batch, seq, mp, plan.weights, plan.kv_cache, plan.overhead, plan.total, views,
                      fits_here, max_batch, options, advice)


def _fix_words(v, config: ModelConfig, vocab: int, dtype: str, batch: int, seq: int, ckpt: str) -> list[str]:
    """The verdict's reshard and int8 changes (a lower batch alone is worded by the caller)."""
    if v.fix_plan is None:
        return [f"no MP fits {v.n_gpus} GPU(s) of {_gib(v.gpu_bytes)}, not even at int8; "
                f"{fit_summary(fit_options(config, vocab, dtype, batch, seq), dtype)}"]
    out = []
    if v.mp_to:
        out.append(f"reshard to MP {v.mp_to}: `{reshard_command(ckpt, v.mp_to)}` "
                   f"({_gib(v.fix_plan.total)} per GPU at {v.fix_plan.dtype})")
    if v.int8:
        out.append(f"it does not fit these GPUs at {dtype} but does at int8: set `quantize: int8` in the recipe")
    if v.batch_to and out:
        out.append(f"with --batch {v.batch_to}")
    return out


# ----------------------------------------------------------------------------------------------- entry points
def inspect_checkpoint(ckpt_dir: str | Path, tokenizer: str | Path | None = None, dtype: str = DEFAULT_DTYPE,
                       batch: int = DEFAULT_BATCH, seq: int = DEFAULT_SEQ, gpus: list[GpuInfo] | None = None,
                       verify: bool = False, progress: ProgressFn | None = None) -> InspectReport:
    """Inspect one Meta checkpoint folder without reading tensor data (unless verify); never raises for
    problems with the folder - they are the report's `problems`. `gpus=None` detects them via NVML."""
    if dtype not in DTYPE_BYTES:
        raise LlamakitError(f"unknown dtype {dtype!r}", f"use one of {', '.join(DTYPE_BYTES)}")
    if batch < 1 or seq < 1:
        raise LlamakitError("--batch and --seq must be at least 1", "pass positive numbers")
    t0 = time.perf_counter()
    path = Path(ckpt_dir)
    report = InspectReport(path=str(path))
    probs = report.problems
    if not path.is_dir():
        _problem(probs, "error", "not-a-folder",
                 "checkpoint folder does not exist" if not path.exists() else "checkpoint path is a file, not a folder",
                 "pass the folder holding consolidated.NN.pth and params.json (e.g. /data/LLaMA/13B)", path.resolve())
        return report
    shard_paths = _shard_files(path, probs)
    if not shard_paths and not (path / "params.json").exists():
        report.seconds = round(time.perf_counter() - t0, 3)
        return report  # not a Meta checkpoint at all (e.g. Hugging Face): that one finding says it all
    report.params, config = _read_params(path, probs)
    scan = _scan_shards(shard_paths, probs)
    shapes0 = scan.shapes[0] if scan.shapes else None
    mp: int | None = len(shard_paths) or None
    if shapes0 is not None:
        consistent = _check_consistency(scan, probs)
        matches: bool | None = None
        expected_mp: int | None = len(shard_paths)
        if "tok_embeddings.weight" not in shapes0:
            _problem(probs, "error", "params-mismatch", "shard has no tok_embeddings.weight",
                     "this is not a complete LLaMA shard; copy it again", scan.readable[0])
            matches, expected_mp = False, None
        elif config is not None:
            matches, expected_mp = _check_against_params(config, shapes0, len(shard_paths), "rope.freqs" in shapes0,
                                                         scan.readable[0], probs)
        mp = expected_mp or len(shard_paths)
        report.shards = ShardsInfo(len(shard_paths), expected_mp, scan.files, sum(f.bytes for f in scan.files),
                                   "rope.freqs" in shapes0, consistent, matches, _split_patterns(shapes0))
    elif shard_paths:
        report.shards = ShardsInfo(len(shard_paths), None, scan.files, sum(f.bytes for f in scan.files),
                                   False, False, None, {})
    report.model = _model_info(config, shapes0, scan.dtypes[0] if scan.dtypes else None, mp or 1)
    vocab = report.model.vocab_size if report.model else None
    report.tokenizer = _tokenizer_info(path, tokenizer, vocab, probs)
    if vocab is None and report.tokenizer is not None:
        vocab = report.tokenizer.n_words
    report.checklist = _checklist(path, verify, progress, probs)
    shapes_fit_params = not any(p.code == "params-mismatch" for p in probs)  # else a plan would be fiction
    if config is not None and vocab and mp and shapes_fit_params:
        report.memory = memory_info(config, vocab, mp, dtype, batch, seq,
                                    detect_gpus() if gpus is None else gpus, str(ckpt_dir))
        if report.memory.fits_here is False:
            _problem(probs, "warning", "does-not-fit", report.memory.advice[0],
                     "; ".join(report.memory.advice[1:]) or fit_summary(report.memory.options, dtype, mp))
    report.seconds = round(time.perf_counter() - t0, 3)
    return report


def recipe_settings(recipe_path: str | Path) -> dict[str, Any]:
    """batch, seq, dtype, tokenizer and ckpt_dir from a run recipe (llamakit.run.recipe), for inspect's plan."""
    try:
        from llamakit.run.recipe import load_recipe, resolve_path
    except ImportError:
        raise LlamakitError("recipes are not supported by this llamakit version yet",
                            "pass --batch, --seq and --dtype instead of --recipe") from None
    loaded = load_recipe(recipe_path)
    r = loaded.recipe
    ccs = [g.compute_capability for g in detect_gpus()] if r.dtype == "auto" and r.device != "cpu" else []
    dtype = weight_dtype(resolve_dtype(r.dtype, r.device, ccs), r.quantize)
    return {"batch": r.max_batch_size, "seq": r.max_seq_len, "dtype": dtype,
            "tokenizer": resolve_path(loaded, "tokenizer_path", r.tokenizer_path) if r.tokenizer_path else None,
            "ckpt_dir": resolve_path(loaded, "ckpt_dir", r.ckpt_dir)}
