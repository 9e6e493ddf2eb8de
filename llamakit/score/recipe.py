"""The score recipe (YAML): run's model keys plus the text, window and reference keys, validated as run's are."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from llamakit.errors import LlamakitError
from llamakit.run.recipe import KEYS as RUN_KEYS
from llamakit.run.recipe import KeyInfo, LoadedRecipe, load_recipe

_SHARED = ("ckpt_dir", "tokenizer_path", "out_path", "logging_path", "max_seq_len", "max_batch_size", "id_field",
           "dtype", "device", "nproc", "quantize")

# One entry per key; the order is the order of docs/score.md's table.
KEYS: dict[str, KeyInfo] = {
    "ckpt_dir": RUN_KEYS["ckpt_dir"],
    "tokenizer_path": RUN_KEYS["tokenizer_path"],
    "text_path": KeyInfo("the texts to score: .jsonl (one object per line) or .txt (one text per line)",
                         "a .jsonl or .txt file path"),
    "text_field": KeyInfo("JSONL field holding the text to score", "a field name (default: text)"),
    "prefix_field": KeyInfo("JSONL field holding a context that conditions the text but is not scored",
                            "a field name, or leave it out"),
    "id_field": RUN_KEYS["id_field"],
    "label_field": KeyInfo("JSONL field with each text's label (e.g. human / machine): the run ends with an "
                           "AUROC table and ROC plot of every statistic", "a field name, or leave it out"),
    "out_path": KeyInfo("output JSONL, one row of statistics per text; rows already there are kept and their "
                        "texts skipped (resume)", "a file path, e.g. scores.jsonl"),
    "logging_path": RUN_KEYS["logging_path"],
    "per_token": KeyInfo("also write token_ids, token_logprobs, token_ranks, token_entropies per row",
                         "true or false"),
    "max_seq_len": KeyInfo("tokens per forward pass (bos + prefix + text); longer texts need stride",
                           "an integer from 8 to 1048576 (LLaMA-1: 2048, Llama-2: 4096)"),
    "stride": KeyInfo("score texts longer than max_seq_len in windows of max_seq_len tokens starting every "
                      "`stride` tokens (as the HF perplexity guide)", "an integer from 1 to max_seq_len - 1, "
                      "or leave it out"),
    "max_batch_size": KeyInfo("windows scored together per forward pass", "an integer from 1 to 4096"),
    "reference_ckpt_dir": KeyInfo("a second model (same tokenizer) for Fast-DetectGPT's sampling distribution, "
                                  "xent_mean and binoculars; sharded over the same GPUs",
                                  "a folder path with the same MP as ckpt_dir, or leave it out"),
    "dtype": RUN_KEYS["dtype"],
    "device": RUN_KEYS["device"],
    "nproc": RUN_KEYS["nproc"],
    "quantize": RUN_KEYS["quantize"],
}


class ScoreRecipe(BaseModel):
    """A validated score recipe; paths are still the strings the user wrote."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ckpt_dir: str = Field(min_length=1)
    tokenizer_path: str | None = None
    text_path: str = Field(min_length=1)
    text_field: str = Field("text", min_length=1)
    prefix_field: str | None = Field(None, min_length=1)
    id_field: str = Field("id", min_length=1)
    label_field: str | None = Field(None, min_length=1)
    out_path: str = Field(min_length=1)
    logging_path: str | None = None
    per_token: bool = False
    max_seq_len: int = Field(2048, ge=8, le=1_048_576)
    stride: int | None = Field(None, ge=1)
    max_batch_size: int = Field(32, ge=1, le=4096)
    reference_ckpt_dir: str | None = Field(None, min_length=1)
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    nproc: Literal["auto"] | int = "auto"
    quantize: Literal["none", "int8"] = "none"


assert set(KEYS) == set(ScoreRecipe.model_fields), "KEYS and ScoreRecipe must list the same keys"
assert all(KEYS[k] is RUN_KEYS[k] for k in _SHARED if k not in ("out_path", "max_seq_len", "max_batch_size"))


def load_score_recipe(path: str | Path, overrides: list[str] | None = None,
                      flags: dict[str, Any] | None = None) -> LoadedRecipe:
    """Read and validate a score recipe (file:line errors, --set overrides) and its cross-key rules."""
    lr = load_recipe(path, overrides, flags, ScoreRecipe, KEYS)
    r = lr.recipe
    if r.stride is not None and r.stride >= r.max_seq_len:
        place, line = lr.where("stride")
        raise LlamakitError(f"key 'stride': {r.stride} leaves no context in windows of max_seq_len {r.max_seq_len}",
                            f"use a stride below max_seq_len, e.g. stride: {r.max_seq_len // 2}", place, line)
    return lr
