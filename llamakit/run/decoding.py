"""Decoding settings of a run: the recipe's vLLM-named keys, their per-row overrides (a JSONL field, checked with
file:line before anything starts), what each row records, the samples per prompt, and the versions a dataset was
made with."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llamakit.engine.api import MAX_LOGPROBS, MAX_STOP_IDS, SamplingParams
from llamakit.errors import LlamakitError

# The keys a prompt's row may override (with max_gen_len); the recipe holds the same keys as its defaults.
ROW_KEYS = ("n", "temperature", "top_p", "seed", "top_k", "min_p", "repetition_penalty", "presence_penalty",
            "frequency_penalty", "min_tokens", "stop", "stop_token_ids", "logprobs", "ignore_eos", "max_gen_len")
SAMPLING_KEYS = tuple(f.name for f in fields(SamplingParams))
assert set(SAMPLING_KEYS) | {"max_gen_len"} == set(ROW_KEYS)


class DecodingKeys(BaseModel):
    """The decoding keys with their types and ranges (pydantic, strict: 8 is not "8"); the recipe and the rows."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    n: int = Field(1, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    seed: int = Field(1, ge=0)
    top_k: int = Field(0, ge=0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    min_tokens: int = Field(0, ge=0)
    stop: str | list[str] = Field(default_factory=list)
    stop_token_ids: list[int] = Field(default_factory=list, max_length=MAX_STOP_IDS)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    ignore_eos: bool = False

    @field_validator("stop")
    @classmethod
    def _no_empty_stop(cls, v: str | list[str]) -> str | list[str]:
        if any(s == "" for s in ([v] if isinstance(v, str) else v)):
            raise ValueError("an empty stop string would stop at once")
        return v


DEFAULT_SAMPLING = {k: ([] if isinstance(v, (list, tuple)) else v) for k, v in DecodingKeys().model_dump().items()}


class RowKeys(DecodingKeys):
    """A row's overrides: the same keys plus max_gen_len, all optional."""

    max_gen_len: int = Field(256, ge=1)


KEY_HELP: dict[str, tuple[str, str]] = {  # meaning, allowed (recipe.KEYS, docs/run.md, error fixes)
    "n": ("samples per prompt; rows carry `sample` 0..n-1 and resume by (id, sample)",
          "an integer from 1 to 1024 (more than 1 needs temperature > 0)"),
    "top_k": ("keep only the k most likely tokens; 0 = off", "an integer >= 0"),
    "min_p": ("drop tokens less likely than min_p x the most likely one; 0 = off", "a number from 0 to 1"),
    "repetition_penalty": ("HF/vLLM repetition penalty over prompt and output tokens (logits > 0 divided, < 0 "
                           "multiplied); 1 = off", "a number > 0 and <= 10"),
    "presence_penalty": ("subtracted once from the logit of every token already generated (OpenAI/vLLM); 0 = off",
                         "a number from -2 to 2"),
    "frequency_penalty": ("subtracted from a token's logit once per time it was generated (OpenAI/vLLM); 0 = off",
                          "a number from -2 to 2"),
    "min_tokens": ("no stop (eos, stop_token_ids, stop) before this many generated tokens",
                   "an integer >= 0, at most max_gen_len"),
    "stop": ("strings that end the completion; the text ends before the first match (finish_reason stop, "
             "stop_reason names it)", "a string or a list of non-empty strings"),
    "stop_token_ids": ("token ids that end the completion, besides the tokenizer's eos (not included in it)",
                       f"a list of at most {MAX_STOP_IDS} ids below the vocabulary size"),
    "logprobs": ("K: rows get token_ids, token_logprobs (log-softmax of the raw logits), token_ranks (1 = most "
                 "likely) and the K most likely [id, logprob] per position", f"an integer from 0 to {MAX_LOGPROBS}, "
                 "or leave it out"),
    "ignore_eos": ("keep generating past the tokenizer's eos, to max_gen_len (stop_token_ids and stop still end a "
                   "text); vLLM's key", "true or false"),
    "params_field": ("JSONL field holding a prompt's own decoding settings (any key above and max_gen_len)",
                     "a field name (default: params)"),
}


def problem(err: dict[str, Any]) -> str:
    from llamakit.run.recipe import _problem

    if err["type"] == "value_error":
        return str(err.get("msg", "")).removeprefix("Value error, ")
    if err["type"] == "too_long":
        return f"more than {MAX_STOP_IDS} ids"
    return _problem(err)


def recipe_sampling(recipe: Any) -> dict[str, Any]:
    """The recipe's decoding settings (what plan.json records and a resume compares), JSON-ready."""
    out = {k: getattr(recipe, k) for k in SAMPLING_KEYS}
    out["stop"] = [out["stop"]] if isinstance(out["stop"], str) else list(out["stop"])
    out["stop_token_ids"] = list(out["stop_token_ids"])
    return out


def to_params(settings: dict[str, Any]) -> SamplingParams:
    kw = {k: settings[k] for k in SAMPLING_KEYS}
    kw["stop"] = tuple([kw["stop"]] if isinstance(kw["stop"], str) else kw["stop"])
    kw["stop_token_ids"] = tuple(kw["stop_token_ids"])
    return SamplingParams(**kw)


def check_combination(s: dict[str, Any], max_gen_len: int, vocab: int, where: str, line: int | None,
                      prefix: str = "") -> None:
    """Rules across keys: n > 1 needs sampling, min_tokens <= max_gen_len, stop ids inside the vocabulary."""
    if s["n"] > 1 and s["temperature"] == 0:
        raise LlamakitError(f"{prefix}key 'n': {s['n']} samples at temperature 0 would be {s['n']} identical "
                            "greedy completions", "set temperature > 0 (e.g. 0.8), or n: 1", where, line)
    if s["min_tokens"] > max_gen_len:
        raise LlamakitError(f"{prefix}key 'min_tokens': {s['min_tokens']} is more than max_gen_len {max_gen_len}",
                            f"use min_tokens <= {max_gen_len}", where, line)
    bad = [t for t in s["stop_token_ids"] if t >= vocab]
    if bad:
        raise LlamakitError(f"{prefix}key 'stop_token_ids': id {bad[0]} is not in the vocabulary ({vocab} tokens)",
                            f"use ids from 0 to {vocab - 1} (`llamakit inspect` shows the tokenizer)", where, line)


def row_settings(raw: Any, field: str, base: dict[str, Any], base_gen: int, vocab: int, max_seq_len: int,
                 path: Path, line: int, recipe_chat: str = "none") -> tuple[dict[str, Any], dict[str, Any]]:
    """Validate one row's `field` object; returns (its effective settings incl. max_gen_len, the keys that differ
    from the recipe: what the row records)."""
    if raw is None:
        return {**base, "max_gen_len": base_gen}, {}
    if not isinstance(raw, dict):
        raise LlamakitError(f"field '{field}' is {type(raw).__name__}, not an object",
                            f"write it like \"{field}\": {{\"temperature\": 0.7, \"top_k\": 50}}", path, line)
    chat = raw.get("chat_format")  # checked with the prompt (run.prompts); recorded like the decoding keys
    raw = {k: v for k, v in raw.items() if k != "chat_format"}
    unknown = [k for k in raw if k not in ROW_KEYS]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], ROW_KEYS, n=1, cutoff=0.6)
        hint = f"did you mean '{close[0]}'? " if close else ""
        raise LlamakitError(f"field '{field}': unknown key '{unknown[0]}'", f"{hint}known keys: "
                            f"{', '.join(ROW_KEYS)}, chat_format", path, line)
    try:
        RowKeys(**raw)
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        allowed = KEY_HELP.get(key, (None, None))[1] or _recipe_allowed(key)
        raise LlamakitError(f"field '{field}': key '{key}': {problem(err)}", f"use {allowed}", path, line) from None
    eff = {**base, "max_gen_len": base_gen, **raw}
    if isinstance(eff["stop"], str):
        eff["stop"] = [eff["stop"]]
    if eff["max_gen_len"] >= max_seq_len:
        raise LlamakitError(f"field '{field}': key 'max_gen_len': {eff['max_gen_len']} leaves no room for the prompt "
                            f"in max_seq_len {max_seq_len}", "make it smaller than max_seq_len", path, line)
    check_combination(eff, eff["max_gen_len"], vocab, str(path), line, f"field '{field}': ")
    recorded = {k: eff[k] for k in ROW_KEYS if eff[k] != ({**base, "max_gen_len": base_gen})[k]}
    if chat is not None and chat != recipe_chat:
        recorded["chat_format"] = chat
    return eff, recorded


def _recipe_allowed(key: str) -> str:
    from llamakit.run.recipe import KEYS

    return KEYS[key].allowed if key in KEYS else "a valid value"


def graph_modes(settings: Iterable[dict[str, Any]]) -> tuple[str, ...]:
    """The engine's decode-step variants this run can need (a batch needs its most demanding row's)."""
    modes = set()
    for s in settings:
        p = to_params(s)
        modes.add("full" if p.needs_processors or p.min_tokens > 0 else "sample" if p.temperature > 0 else "greedy")
    return tuple(m for m in ("greedy", "sample", "full") if m in modes) or ("greedy",)


def row_key(pid: Any, sample: int = 0) -> str:
    """Canonical (id, sample) key of an output row: resume finds finished samples by it (7 and "7" differ)."""
    return json.dumps([pid, sample], ensure_ascii=False)


def decoding_fields(completion: Any, sample: int, recorded: dict[str, Any]) -> dict[str, Any]:
    """What a row adds after finish_reason: sample, stop_reason (when a stop string or id ended it), the settings
    that differ from the recipe, and with logprobs the per-token lists."""
    row: dict[str, Any] = {"sample": sample}
    if completion.stop_reason is not None:
        row["stop_reason"] = completion.stop_reason
    if recorded:
        row["params"] = recorded
    if completion.logprobs is not None:
        row["token_ids"] = list(completion.tokens)
        row["token_logprobs"] = [round(x, 6) for x in completion.logprobs.token_logprobs]
        row["token_ranks"] = completion.logprobs.token_ranks
        row["top_logprobs"] = [[[int(t), round(lp, 6)] for t, lp in top] for top in completion.logprobs.top_logprobs]
    return row


ROW_FIELDS = {"sample", "stop_reason", "params", "token_ids", "token_logprobs", "token_ranks", "top_logprobs"}


def versions(gpus: list[Any]) -> dict[str, Any]:
    """llamakit, torch, CUDA (torch's build), the NVIDIA driver and the GPUs used, for describing a dataset."""
    import platform

    import torch

    from llamakit import __version__

    driver = None
    try:
        import pynvml

        pynvml.nvmlInit()
        d = pynvml.nvmlSystemGetDriverVersion()
        driver = d.decode() if isinstance(d, bytes) else str(d)
    except Exception:  # no NVIDIA driver here (CPU runs): recorded as null
        pass
    return {"llamakit": __version__, "torch": torch.__version__, "cuda": torch.version.cuda, "driver": driver,
            "gpus": [g.name for g in gpus], "python": platform.python_version()}


def as_json_settings(p: SamplingParams) -> dict[str, Any]:
    d = asdict(p)
    d["stop"], d["stop_token_ids"] = list(d["stop"]), list(d["stop_token_ids"])
    return d


class RowPlan:
    """Each prompt's decoding settings (the recipe's, overridden by its params field) and samples, for plan_run."""

    def __init__(self, recipe: Any, by_id: dict[str, tuple[dict[str, Any], dict[str, Any]]]):
        self.recipe = recipe
        self.by_id = by_id

    def _of(self, p: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        return self.by_id[json.dumps(p.id, ensure_ascii=False)]

    @property
    def total(self) -> int:
        """Rows the finished output holds: n per prompt."""
        return sum(s["n"] for s, _ in self.by_id.values())

    def count(self, prompts: list[Any]) -> int:
        """Rows these prompts' finished output holds (n each)."""
        return sum(self._of(p)[0]["n"] for p in prompts)

    def expect(self, p: Any) -> tuple[int, dict[str, Any]]:
        settings, recorded = self._of(p)
        return settings["n"], recorded

    def missing(self, p: Any, done: set[str]) -> list[int]:
        return [s for s in range(self._of(p)[0]["n"]) if row_key(p.id, s) not in done]

    def max_prompt_len(self, p: Any) -> int:
        return self.recipe.max_seq_len - self._of(p)[0]["max_gen_len"]

    def fill(self, todo: list[Any], done: set[str]) -> None:
        """Give each prompt still to do its missing samples and its settings."""
        for t in todo:
            t.samples = self.missing(t.prompt, done)
            t.settings, t.recorded = self._of(t.prompt)

    def graph_modes(self, todo: list[Any]) -> tuple[str, ...]:
        return graph_modes([t.settings for t in todo if not t.skipped] or [self._of(t.prompt)[0] for t in todo[:1]])


def plan_rows(lr: Any, prompts: list[Any], vocab: int, prompt_path: Path) -> RowPlan:
    """Check the recipe's vocabulary-dependent keys and every row's params field (file:line, key), before anything
    starts; returns the settings of every prompt."""
    r = lr.recipe
    base = recipe_sampling(r)
    place, line = lr.where("stop_token_ids")
    check_combination(base, r.max_gen_len, vocab, place, line)
    by_id = {}
    for p in prompts:
        by_id[json.dumps(p.id, ensure_ascii=False)] = row_settings(p.params, r.params_field, base, r.max_gen_len,
                                                                    vocab, r.max_seq_len, prompt_path, p.line,
                                                                    getattr(r, "chat_format", "none"))
    return RowPlan(r, by_id)


def work_request(w: dict[str, Any], max_gen_len: int, interned: dict[SamplingParams, SamplingParams]) -> Any:
    """The engine request of one work-list entry (a prompt's sample), its settings interned so equal settings are
    one object (the sampler's fast path compares by identity)."""
    from llamakit.engine.api import Request

    settings = w.get("settings")
    params = None
    if settings:
        p = to_params(settings)
        params = interned.setdefault(p, p)
        max_gen_len = settings.get("max_gen_len", max_gen_len)
    return Request(key=w["key"], prompt_tokens=w["tokens"], max_gen_len=max_gen_len, payload=w, params=params,
                   sample=w.get("sample", 0))


def describe_sampling(sampling: dict[str, Any]) -> str:
    """The plan's sampling line: temperature/top_p/seed as before, then every other key that is not at its default."""
    s = {**DEFAULT_SAMPLING, **sampling}
    head = "greedy (temperature 0)" if s["temperature"] == 0 else f"temperature {s['temperature']}, top_p {s['top_p']}"
    rest = [f"{k} {s[k]}" for k in SAMPLING_KEYS if k not in ("temperature", "top_p", "seed")
            and s[k] != DEFAULT_SAMPLING[k]]
    return ", ".join([head, f"seed {s['seed']}", *rest])


def parse_sampling(items: list[str]) -> dict:
    """`llamakit bench --set key=value` pairs of decoding keys, checked as the recipe checks them (one line on a bad
    one)."""
    from pydantic import ValidationError

    from llamakit.run.recipe import parse_override

    out = dict(parse_override(item) for item in items)
    try:
        DecodingKeys(**out)
    except ValidationError as e:
        err = e.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else "?"
        if err["type"] == "extra_forbidden":
            raise LlamakitError(f"--set {key}: not a decoding key", "use one of: " + ", ".join(
                DecodingKeys.model_fields)) from None
        raise LlamakitError(f"--set {key}: {problem(err)}", "see `llamakit explain " + key + "`") from None
    return out
