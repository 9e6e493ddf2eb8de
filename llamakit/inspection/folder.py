"""`llamakit inspect` as a pure function: checkpoint folder -> InspectReport (params, shapes, shards, md5, memory).

The report collects problems (llamakit.errors.Problem, each with its fix) instead of stopping at the first one, so
the rest of the report is still there: the checks are llamakit.checkpoint.validate's, the ones `open_checkpoint`
stops at. Only `verify=True` reads every byte (md5 against checklist.chk).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any, Callable

import torch

from llamakit import defaults
from llamakit.checkpoint import validate
from llamakit.checkpoint.checklist import md5_file, read_checklist
from llamakit.checkpoint.layout import DTYPES, EMBEDDING, embedding_split, is_known, split_dim
from llamakit.checkpoint.params import ModelConfig, identify, load_params
from llamakit.checkpoint.validate import SHARD_RE
from llamakit.errors import LlamakitError, Problem
from llamakit.fit import resolve_dtype
from llamakit.gpus import GpuInfo, detect_gpus
from llamakit.inspection.advice import fit_summary, memory_info
from llamakit.inspection.report import (ChecklistInfo, FileCheck, Finding, InspectReport, ModelInfo, ShardsInfo,
                                        TokenizerInfo)
from llamakit.memory import DTYPE_BYTES, weight_dtype
from llamakit.tokenizer import Tokenizer, find_tokenizer

DEFAULT_BATCH, DEFAULT_SEQ, DEFAULT_DTYPE = defaults.MAX_BATCH_SIZE, defaults.MAX_SEQ_LEN, defaults.DTYPE
TORCH_DTYPES = {t: name for name, t in DTYPES.items()}
ProgressFn = Callable[[str, int, int], None]  # (file name, bytes done over all files, bytes total)


# ----------------------------------------------------------------------------------------------- the steps
def _problem(probs: list[Finding], level: str, code: str, what: str, fix: str = "", where: Any = None) -> None:
    probs.append(Problem(what, fix, str(where) if where is not None else None, None, level, code))


def _from_error(probs: list[Finding], code: str, e: LlamakitError, level: str = "error") -> None:
    probs.append(e.problem(code, level))


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


def _vocab_parallel(config: ModelConfig | None, shapes: dict[str, tuple[int, ...]], mp: int) -> bool:
    """Whether the embedding is split by vocabulary (Llama 3) in these shards (see layout.embedding_split)."""
    emb, norm = shapes.get(EMBEDDING), shapes.get("norm.weight")
    if config is None:
        return bool(mp > 1 and emb and norm and emb[1] == norm[0])
    return embedding_split(config, emb, mp)


def _split_patterns(shapes: dict[str, tuple[int, ...]], vocab_parallel: bool) -> dict[str, int | None]:
    """Split dimension per key pattern (layers.N collapsed to layers.*), in the shard's order."""
    out: dict[str, int | None] = {}
    for k in shapes:
        if is_known(k):
            out.setdefault(re.sub(r"^layers\.\d+\.", "layers.*.", k), split_dim(k, vocab_parallel))
    return out


def _count_params(shapes: dict[str, tuple[int, ...]], mp: int, vocab_parallel: bool) -> int:
    """Exact parameter count of the merged model from one shard's shapes (split keys times MP)."""
    total = 0
    for k, s in shapes.items():
        if k == "rope.freqs" or not is_known(k):
            continue
        n = 1
        for d in s:
            n *= d
        total += n * (mp if split_dim(k, vocab_parallel) is not None else 1)
    return total


def _disk_dtype(dtypes: dict[str, torch.dtype]) -> str:
    names = sorted({TORCH_DTYPES.get(t, str(t).replace("torch.", "")) for k, t in dtypes.items() if k != "rope.freqs"})
    return names[0] if len(names) == 1 else f"mixed ({', '.join(names)})"


def _model_info(config: ModelConfig | None, shapes: dict[str, tuple[int, ...]] | None,
                dtypes: dict[str, torch.dtype] | None, mp: int) -> ModelInfo | None:
    if config is None and shapes is None:
        return None
    vp = _vocab_parallel(config, shapes, mp) if shapes else False
    vocab = shapes[EMBEDDING][0] * (mp if vp else 1) if shapes and EMBEDDING in shapes else None
    if vocab is None and config is not None and config.vocab_size > 0:
        vocab = config.vocab_size
    count = _count_params(shapes, mp, vp) if shapes else 0
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
                 "use the tokenizer.model that came with this model (Meta's LLaMA-1/2 has 32000, Llama 3 128256)",
                 tok_path)
    return TokenizerInfo(str(tok_path), tok.n_words, tok.bos_id, tok.eos_id, tok.pad_id, matches, tok.kind,
                         sorted(tok.stop_ids))


def chat_verdict(path: Path, llama3: bool) -> str:
    """Whether the folder looks like a chat / instruct model. Base and chat weights have the same shapes, params.json
    and tokenizer, so only Meta's folder names (Llama-2-7b-chat, Meta-Llama-3-8B-Instruct) tell; say so."""
    fmt = "llama3-instruct" if llama3 else "llama2-chat"
    names = [p.name for p in (path.resolve(), path.resolve().parent)]
    hit = next((n for n in names if re.search(r"chat|instruct", n, re.IGNORECASE)), None)
    if hit:
        return (f"looks like a chat model (folder name {hit!r}; the files themselves cannot tell): "
                f"use chat_format: {fmt}")
    return ("cannot tell whether this is a base or a chat model: their files have the same shapes, params.json and "
            f"tokenizer (Meta's folder names say it, e.g. ...-chat, ...-Instruct); for a chat model use chat_format: "
            f"{fmt}")


def _checklist(path: Path, verify: bool, progress: ProgressFn | None, probs: list[Finding]) -> ChecklistInfo | None:
    """Compare the folder with checklist.chk (names always; md5 of every byte only with verify)."""
    chk = path / "checklist.chk"
    if not chk.is_file():
        if verify:
            _problem(probs, "warning", "no-checklist", "no checklist.chk: nothing to verify against",
                     "copy checklist.chk from the original download (Meta ships one per model folder)", path)
        return None
    expected, malformed = read_checklist(chk)
    for lineno in malformed:
        _problem(probs, "warning", "checklist-malformed", "line is not `md5  filename`",
                 "restore checklist.chk from the original download", f"{chk}:{lineno}")
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
        got = md5_file(path / name, tick)
        info.files.append(FileCheck(name, want, got, got == want))
        if got != want:
            _problem(probs, "error", "md5-mismatch",
                     "md5 differs from checklist.chk: the file is damaged or from another download",
                     "copy it again from the original download", path / name)
    info.ok = all(f.ok for f in info.files)
    return info


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
    shard_paths = validate.list_shards(path, probs)
    if not path.is_dir():
        return report
    if not shard_paths and not (path / "params.json").exists():
        report.seconds = round(time.perf_counter() - t0, 3)
        return report  # not a Meta checkpoint at all (e.g. Hugging Face): that one finding says it all
    report.params, config = _read_params(path, probs)
    scan = validate.scan_shards(shard_paths, probs)
    shapes0 = scan.shapes[0] if scan.shapes else None
    mp: int | None = len(shard_paths) or None
    if shapes0 is not None:
        consistent = validate.check_consistency(scan, probs)
        matches, expected_mp = validate.check_against_params(config, shapes0, len(shard_paths),
                                                             "rope.freqs" in shapes0, scan.readable[0], probs)
        mp = expected_mp or len(shard_paths)
        report.shards = ShardsInfo(len(shard_paths), expected_mp, scan.files, sum(f.bytes for f in scan.files),
                                   "rope.freqs" in shapes0, consistent, matches,
                                   _split_patterns(shapes0, _vocab_parallel(config, shapes0, len(shard_paths))))
    elif shard_paths:
        report.shards = ShardsInfo(len(shard_paths), None, scan.files, sum(f.bytes for f in scan.files),
                                   False, False, None, {})
    report.model = _model_info(config, shapes0, scan.dtypes[0] if scan.dtypes else None, mp or 1)
    vocab = report.model.vocab_size if report.model else None
    report.tokenizer = _tokenizer_info(path, tokenizer, vocab, probs)
    if report.model is not None:
        llama3 = report.tokenizer.kind == "tiktoken" if report.tokenizer else bool(config and config.llama3_family)
        report.model.chat = chat_verdict(path, llama3)
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
    from llamakit.run.recipe import load_recipe, resolve_path
    loaded = load_recipe(recipe_path)
    r = loaded.recipe
    ccs = [g.compute_capability for g in detect_gpus()] if r.dtype == "auto" and r.device != "cpu" else []
    dtype = weight_dtype(resolve_dtype(r.dtype, r.device, ccs), r.quantize)
    return {"batch": r.max_batch_size, "seq": r.max_seq_len, "dtype": dtype,
            "tokenizer": resolve_path(loaded, "tokenizer_path", r.tokenizer_path) if r.tokenizer_path else None,
            "ckpt_dir": resolve_path(loaded, "ckpt_dir", r.ckpt_dir)}
