"""The `llamakit inspect` report: what it found about a folder, as dataclasses with a stable JSON form
(`InspectReport.to_json`, `--json`); the problems are llamakit.errors.Problem records."""

from __future__ import annotations

import json
import types
from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any, Union, get_args, get_origin, get_type_hints

from llamakit.checkpoint.validate import ShardFile
from llamakit.errors import Problem
from llamakit.fit import FitOption
from llamakit.gpus import GpuInfo

SCHEMA = "llamakit.inspect/1"
Finding = Problem  # one problem of the report: level 'error' (exit non-zero) or 'warning', a stable code, what + fix

__all__ = ["SCHEMA", "Finding", "ModelInfo", "ShardFile", "ShardsInfo", "TokenizerInfo", "FileCheck", "ChecklistInfo",
           "MemoryInfo", "InspectReport"]


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
    chat: str = ""  # whether it looks like a chat / instruct model, and how sure that is (a sentence)


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
    kind: str = "sentencepiece"  # or "tiktoken" (Llama 3), told from the file's content
    stop_ids: list[int] = field(default_factory=list)  # generation ends on any of these


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
    gpus: list[GpuInfo]
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
    if origin is tuple:  # JSON has lists; (major, minor) compute capabilities are tuples
        return tuple(value)
    if origin is dict:
        return dict(value)
    if is_dataclass(tp):
        hints = get_type_hints(tp)
        return tp(**{f.name: _build(hints[f.name], value[f.name]) for f in fields(tp) if f.name in value})
    return value
