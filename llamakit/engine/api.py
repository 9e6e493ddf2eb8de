"""The contract between `llamakit run` and the engine: requests in, completions out (any engine can sit behind it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Literal, Protocol

from llamakit import defaults


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine; identical on every rank of a model-parallel group."""

    max_seq_len: int = defaults.MAX_SEQ_LEN  # prompt + generated tokens, per sequence
    max_batch_size: int = defaults.MAX_BATCH_SIZE  # sequences decoded together (the engine may use fewer)
    dtype: Literal["bf16", "fp16", "fp32"] = "fp32"
    device: Literal["cpu", "cuda"] = "cpu"
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 0.9
    seed: int = 1
    quantize: Literal["none", "int8"] = "none"
    fast: bool = True  # CUDA graphs / compiled decode where available


@dataclass
class Request:
    """One prompt to complete. `key` is a stable integer (e.g. the line number) that seeds its sampling."""

    key: int
    prompt_tokens: list[int]
    max_gen_len: int
    payload: Any = field(default=None, compare=False)  # carried through untouched (the input record)


@dataclass
class Completion:
    request: Request
    tokens: list[int]  # generated ids, without the final eos
    finish_reason: Literal["stop", "length"]


class Engine(Protocol):
    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        """Yield one Completion per request as each finishes (not necessarily in input order).

        Every rank of a model-parallel group must pass the same requests in the same order; sampling of a
        request depends only on (seed, request.key, step), so a resumed run reproduces the same text.
        """
        ...
