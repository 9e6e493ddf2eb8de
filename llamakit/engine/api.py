"""The contract between `llamakit run` and the engine: requests in, completions out (any engine can sit behind it)."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Iterable, Iterator, Literal, Protocol

from llamakit import defaults

MAX_LOGPROBS = 20  # top_logprobs per position at most (vLLM's default cap): the graph computes this many
MAX_STOP_IDS = 15  # stop_token_ids per request at most: with the tokenizer's stop ids they fit the graph's ban list
MAX_EOS_IDS = 3  # the tokenizer's own stop ids at most (Llama 3: end_of_text, eom, eot; LLaMA-1/2: eos)


@dataclass(frozen=True)
class SamplingParams:
    """How one request is decoded; the names and meanings are vLLM's SamplingParams (see docs/run.md).

    Processors run in vLLM's order: penalties, then temperature, then top-k / top-p / min-p. `n` is the number of
    samples per prompt: the run layer turns it into n requests with `Request.sample` 0..n-1.
    """

    n: int = 1
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 0.9
    seed: int = 1
    top_k: int = 0  # 0 = off
    min_p: float = 0.0
    repetition_penalty: float = 1.0  # HF/vLLM: prompt and output tokens; > 1 discourages
    presence_penalty: float = 0.0  # OpenAI/vLLM: output tokens only
    frequency_penalty: float = 0.0
    min_tokens: int = 0  # no eos / stop id / stop string before this many tokens
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    logprobs: int | None = None  # K: token logprob, rank and the K most likely per position
    ignore_eos: bool = False  # keep generating past the tokenizer's eos (stop_token_ids and stop still end it)

    @cached_property
    def needs_processors(self) -> bool:
        """Anything beyond temperature + top-p on the device (penalties, top-k, min-p, logprobs)."""
        return (self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
                or self.top_k > 0 or self.min_p > 0.0 or self.logprobs is not None)

    @cached_property
    def needs_history(self) -> bool:
        """The penalties read the tokens seen so far."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0


@dataclass(frozen=True)
class EngineConfig:
    """How to build an engine; identical on every rank of a model-parallel group."""

    max_seq_len: int = defaults.MAX_SEQ_LEN  # prompt + generated tokens, per sequence
    max_batch_size: int = defaults.MAX_BATCH_SIZE  # upper limit of sequences decoded together; free KV blocks decide
    dtype: Literal["bf16", "fp16", "fp32"] = "fp32"
    device: Literal["cpu", "cuda"] = "cpu"
    temperature: float = 0.0  # 0 = greedy; temperature, top_p and seed: the defaults of requests without params
    top_p: float = 0.9
    seed: int = 1
    quantize: Literal["none", "int8"] = "none"
    fast: bool = True  # CUDA graphs / compiled decode where available
    block_size: int = 16  # tokens per KV-cache block (vLLM's name and default)
    # vLLM's kv_cache_dtype: "auto" (the model's dtype) or "fp8" / "fp8_e4m3" (e4m3 bytes: twice the tokens held,
    # half the bytes a decode step reads; keys and values rounded to 3 mantissa bits)
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3"] = "auto"
    # a sequence's tokens and logprobs do not depend on the batch it runs in, bit for bit, on GPUs too (in bf16 the
    # matmul kernels otherwise change with the row count): fixed-shape matmuls, one key range in decode attention,
    # a prefill computed as decode steps would, so a preempted sequence is recomputed exactly (make_batch_invariant)
    batch_invariant: bool = False
    kv_cache_tokens: int = 0  # 0: what GPU memory holds (CUDA) or max_batch_size x max_seq_len (CPU)
    # fraction of each GPU's total memory this process may use (vLLM's name and meaning); 1.0: all of it, less the
    # memory plan's reserve (llamakit.memory.kv_capacity)
    gpu_memory_utilization: float = 1.0
    eos_id: int | None = None  # the tokenizer's eos; None: read it from the checkpoint's tokenizer; -1: never stop
    # decode-step variants to capture as CUDA graphs: greedy (argmax), sample (temperature/top-p), full (every
    # processor and logprobs); a step needing one not captured runs without a graph
    graph_modes: tuple[str, ...] = ("greedy", "sample", "full")

    def default_params(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, seed=self.seed)


@dataclass
class Request:
    """One prompt to complete. `key` is a stable integer (e.g. the line number) that seeds its sampling, with
    `sample` (0..n-1) telling a prompt's samples apart."""

    key: int
    prompt_tokens: list[int]
    max_gen_len: int
    payload: Any = field(default=None, compare=False)  # carried through untouched (the input record)
    params: SamplingParams | None = None  # None: the engine's defaults (EngineConfig temperature/top_p/seed)
    sample: int = 0


@dataclass
class TokenLogprobs:
    """Per generated token: log-softmax of the raw logits (before penalties and temperature), its rank (1 = most
    likely) and the K most likely [id, logprob]."""

    token_logprobs: list[float] = field(default_factory=list)
    token_ranks: list[int] = field(default_factory=list)
    top_logprobs: list[list[list[float | int]]] = field(default_factory=list)


@dataclass
class Completion:
    request: Request
    tokens: list[int]  # generated ids, without the final eos / stop id
    finish_reason: Literal["stop", "length"]
    stop_reason: str | int | None = None  # the stop string or stop id that ended it (None for eos and length)
    text: str | None = None  # set when a stop string cut the text (the text before it); else decode `tokens`
    logprobs: TokenLogprobs | None = None  # when params.logprobs is set; one entry per token of `tokens`


class Engine(Protocol):
    def generate(self, requests: Iterable[Request]) -> Iterator[Completion]:
        """Yield one Completion per request as each finishes (not necessarily in input order).

        Every rank of a model-parallel group must pass the same requests in the same order; sampling of a
        request depends only on (seed, request.key, request.sample, step), so a resumed run reproduces the same
        text.
        """
        ...
