"""The run recipe (YAML): its keys, their validation into one-line errors with file:line, overrides, path rules."""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llamakit import __version__, defaults
from llamakit.data import asset_path, data_dir
from llamakit.errors import LlamakitError
from llamakit.run.decoding import KEY_HELP, DecodingKeys, check_combination, problem

BUILTIN = "builtin:"


@dataclass(frozen=True)
class KeyInfo:
    """What a recipe key means and what values it accepts (used in error fixes and docs/run.md)."""

    meaning: str
    allowed: str


# One entry per recipe key; the order is the order of docs/run.md's table.
KEYS: dict[str, KeyInfo] = {
    "ckpt_dir": KeyInfo("folder with consolidated.NN.pth shards and params.json",
                        "a folder path such as /data/LLaMA/13B, or builtin:demo"),
    "tokenizer_path": KeyInfo("Meta's tokenizer.model (default: in ckpt_dir or its parent)",
                              "a file path such as /data/LLaMA/tokenizer.model, or leave it out"),
    "prompt_path": KeyInfo("the prompts: .jsonl (one object per line) or .txt (one prompt per line)",
                           "a .jsonl or .txt file path, or builtin:demo-prompts.jsonl"),
    "out_path": KeyInfo("output JSONL; rows already there are kept and their prompts skipped (resume)",
                        "a file path, e.g. generated.jsonl"),
    "logging_path": KeyInfo("complete log of the run: plan, progress, errors, summary (default: out_path with .log)",
                            "a file path, or leave it out"),
    "max_seq_len": KeyInfo("prompt + generated tokens per sequence; sizes the KV cache",
                           "an integer from 8 to 1048576, larger than max_gen_len (LLaMA-1: 2048, Llama-2: 4096)"),
    "max_gen_len": KeyInfo("most tokens generated per prompt", "an integer >= 1, smaller than max_seq_len"),
    "max_batch_size": KeyInfo("upper limit of sequences decoded together per GPU group (the paged KV cache, sized "
                              "from GPU memory, decides how many run at once)",
                              "an integer from 1 to 4096"),
    "temperature": KeyInfo("sampling temperature; 0 = greedy (deterministic)", "a number from 0 to 10"),
    "top_p": KeyInfo("nucleus sampling threshold", "a number > 0 and <= 1"),
    "seed": KeyInfo("sampling seed; each prompt's sampling depends on (seed, line, sample, step)",
                    "an integer >= 0"),
    **{k: KeyInfo(*v) for k, v in KEY_HELP.items() if k != "params_field"},
    "prompt_field": KeyInfo("JSONL field holding the prompt text", "a field name (default: prompt)"),
    "params_field": KeyInfo(*KEY_HELP["params_field"]),
    "chat_format": KeyInfo("how prompts are turned into tokens: none = plain text; llama2-chat / llama3-instruct = "
                           "Meta's chat format (a prompt is then a string or a list of {role, content} messages); "
                           "a row's params object may set its own",
                           "one of none, llama2-chat, llama3-instruct"),
    "id_field": KeyInfo("JSONL field holding the prompt's id; a line without it gets its line number",
                        "a field name (default: id)"),
    "on_long_prompt": KeyInfo("what to do with a prompt longer than max_seq_len - max_gen_len tokens",
                              "one of error, truncate (keep the beginning), skip (row with finish_reason skipped)"),
    "dtype": KeyInfo("compute dtype; auto = bf16 on GPUs with compute capability >= 8.0, fp16 on older, fp32 on CPU",
                     "one of auto, bf16, fp16, fp32"),
    "device": KeyInfo("where to run; auto = cuda when a GPU is visible, else cpu", "one of auto, cuda, cpu"),
    "nproc": KeyInfo("processes = MP x DP; auto = as many data-parallel replicas as the visible GPUs allow",
                     "auto or a positive multiple of the checkpoint's MP"),
    "quantize": KeyInfo("int8 weights (about half the memory of bf16)", "one of none, int8"),
    "fast": KeyInfo("CUDA graphs / compiled decode where available", "true or false"),
    "kv_cache_dtype": KeyInfo("how the KV cache stores keys and values (vLLM's key); auto = the compute dtype, fp8 = "
                              "e4m3 bytes: twice the tokens in the same memory, keys/values rounded to 3 mantissa bits",
                              "one of auto, fp8, fp8_e4m3"),
    "batch_invariant": KeyInfo("a prompt's tokens and logprobs do not depend on the other prompts in its batch, the "
                               "batch size or a preemption, bit for bit, also on GPUs in bf16 (matmuls that sum in the "
                               "same order at any batch size, a prefill computed as decode steps would); some speed "
                               "for it", "true or false"),
    "gpu_memory_utilization": KeyInfo("fraction of each GPU's total memory this run may use (vLLM's name); the paged "
                                      "KV cache gets what is left of it after the weights and the reserve",
                                      "a number > 0 and <= 1 (e.g. 0.34 makes a 141 GB H200 behave like a 48 GB "
                                      "card)"),
}


class Recipe(BaseModel):
    """A validated recipe; paths are still the strings the user wrote (see resolve_paths)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    ckpt_dir: str = Field(min_length=1)
    tokenizer_path: str | None = None
    prompt_path: str = Field(min_length=1)
    out_path: str = Field(min_length=1)
    logging_path: str | None = None
    max_seq_len: int = Field(defaults.MAX_SEQ_LEN, ge=8, le=1_048_576)
    max_gen_len: int = Field(256, ge=1)
    max_batch_size: int = Field(defaults.MAX_BATCH_SIZE, ge=1, le=4096)
    temperature: float = Field(0.0, ge=0.0, le=10.0)
    top_p: float = Field(0.9, gt=0.0, le=1.0)
    seed: int = Field(1, ge=0)
    n: int = DecodingKeys.model_fields["n"]
    top_k: int = DecodingKeys.model_fields["top_k"]
    min_p: float = DecodingKeys.model_fields["min_p"]
    repetition_penalty: float = DecodingKeys.model_fields["repetition_penalty"]
    presence_penalty: float = DecodingKeys.model_fields["presence_penalty"]
    frequency_penalty: float = DecodingKeys.model_fields["frequency_penalty"]
    min_tokens: int = DecodingKeys.model_fields["min_tokens"]
    stop: str | list[str] = DecodingKeys.model_fields["stop"]
    stop_token_ids: list[int] = DecodingKeys.model_fields["stop_token_ids"]
    logprobs: int | None = DecodingKeys.model_fields["logprobs"]
    ignore_eos: bool = DecodingKeys.model_fields["ignore_eos"]
    prompt_field: str = Field("prompt", min_length=1)
    params_field: str = Field("params", min_length=1)
    chat_format: Literal["none", "llama2-chat", "llama3-instruct"] = "none"
    id_field: str = Field("id", min_length=1)
    on_long_prompt: Literal["error", "truncate", "skip"] = "error"
    dtype: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    device: Literal["auto", "cuda", "cpu"] = "auto"
    nproc: Literal["auto"] | int = "auto"
    quantize: Literal["none", "int8"] = "none"
    fast: bool = True
    kv_cache_dtype: Literal["auto", "fp8", "fp8_e4m3"] = "auto"
    batch_invariant: bool = False
    gpu_memory_utilization: float = Field(1.0, gt=0.0, le=1.0)

    @property
    def max_prompt_len(self) -> int:
        """Longest prompt (in tokens, bos included) that leaves room for max_gen_len new tokens."""
        return self.max_seq_len - self.max_gen_len


assert set(KEYS) == set(Recipe.model_fields), "KEYS and Recipe must list the same keys"


@dataclass
class LoadedRecipe:
    """A recipe plus where each key came from, so later checks can point at the right line."""

    recipe: Recipe
    path: Path
    sources: dict[str, tuple[str, int | None]] = field(default_factory=dict)  # key -> (file or flag, line)

    def where(self, key: str) -> tuple[str, int | None]:
        """(place, line) of a key: the recipe file and its line, or the command-line flag that set it."""
        return self.sources.get(key, (str(self.path), None))

    def describe(self, key: str) -> str:
        """'recipe.yaml:5' or '--set out_path=...' for use inside a message."""
        place, line = self.where(key)
        return f"{place}:{line}" if line is not None else place


def find_recipe(name: str | Path) -> Path:
    """An existing file as given; otherwise a shipped recipe by bare name (`demo` -> recipes/demo.yaml)."""
    path = Path(name)
    if path.is_file():
        return path.resolve()
    if path.is_dir():
        raise LlamakitError("this is a folder, not a recipe file", "pass a recipe .yaml file", path.resolve())
    shipped: list[str] = []
    try:
        folder: Path | None = data_dir("recipes")
    except FileNotFoundError:
        folder = None
    if folder is not None:
        if "/" not in str(name) and os.sep not in str(name):
            for cand in (folder / str(name), folder / f"{name}.yaml", folder / f"{name}.yml"):
                if cand.is_file():
                    return cand.resolve()
        shipped = sorted(p.stem for p in folder.glob("*.yaml"))
    hint = f"; shipped recipes (run them by name from anywhere, e.g. `llamakit run {shipped[0]}`): " \
        f"{', '.join(shipped)}" if shipped else ""
    if path.stem in shipped:
        hint = f"; {path.name} is a shipped recipe: `llamakit run {path.stem}` runs it from anywhere" + \
            f" (shipped recipes: {', '.join(shipped)})"
    raise LlamakitError("recipe file does not exist",
                        f"check the path (relative paths start at {Path.cwd()}){hint}", path.resolve())


def _key_lines(text: str, path: Path) -> dict[str, int]:
    """Line (1-based) of each top-level key, from the YAML node marks; duplicate keys are an error."""
    try:
        node = yaml.compose(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise LlamakitError(f"not valid YAML ({problem})",
                            "fix the syntax: one `key: value` per line, indent with spaces",
                            path, mark.line + 1 if mark else None) from None
    lines: dict[str, int] = {}
    if isinstance(node, yaml.MappingNode):
        for key_node, _ in node.value:
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise LlamakitError(f"key '{key}' appears twice (first on line {lines[key]})",
                                    "keep one of them", path, line)
            lines[key] = line
    return lines


def parse_override(text: str) -> tuple[str, Any]:
    """`key=value` from `--set`; the value is read as YAML (`8` -> 8, `0.7` -> 0.7, `true` -> True)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise LlamakitError(f"--set {text!r} is not key=value", "write it like --set max_batch_size=8",
                            "command line")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key, value


def _problem(err: dict[str, Any]) -> str:
    """A short human phrase for one pydantic error (without the key)."""
    kind, value = err["type"], err.get("input")
    shown = f"{value!r} ({type(value).__name__})" if value is not None else "empty (null)"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        return f"{value!r} is out of range"
    if kind in ("string_too_short",):
        return "is empty"
    if kind == "literal_error":
        return f"{value!r} is not allowed"
    if kind.endswith("_type") or kind.endswith("_parsing"):
        want = {"int_type": "an integer", "float_type": "a number", "bool_type": "true or false",
                "string_type": "text"}.get(kind, "another type")
        if kind == "int_type" and isinstance(value, float):
            want = "a whole number"
        return f"expected {want}, got {shown}"
    return err.get("msg", "is not valid")


def validate_recipe(raw: Any, path: Path, sources: dict[str, tuple[str, int | None]],
                    schema: type[BaseModel] = Recipe, keys: dict[str, KeyInfo] | None = None) -> Any:
    """Turn a mapping into a Recipe (or another recipe `schema` with its `keys`, e.g. `llamakit score`'s); the
    first problem (in file order) becomes a LlamakitError with file:line."""
    known = KEYS if keys is None else keys
    if not isinstance(raw, dict):
        raise LlamakitError("a recipe must be a mapping of `key: value` lines",
                            "see recipes/demo.yaml for an example", path, 1 if raw is not None else None)
    try:
        recipe = schema(**{str(k): v for k, v in raw.items()})
    except ValidationError as e:
        problems = []
        for err in e.errors():
            key = str(err["loc"][0]) if err["loc"] else ""
            place, line = sources.get(key, (str(path), None))
            problems.append((0 if line is None else 1, line or 0, key, err))
        problems.sort(key=lambda p: (p[0], p[1]))
        _, _, key, err = problems[0]
        place, line = sources.get(key, (str(path), None))
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise LlamakitError(f"unknown key '{key}'", f"{hint}known keys: {', '.join(known)}", place, line) from None
        if err["type"] == "missing":
            raise LlamakitError(f"key '{key}' is missing ({known[key].meaning})",
                                f"add `{key}: ...` ({known[key].allowed})", place, None) from None
        raise LlamakitError(f"key '{key}': {problem(err)}", f"use {known[key].allowed}", place, line) from None
    if isinstance(recipe, Recipe) and recipe.max_gen_len >= recipe.max_seq_len:
        place, line = sources.get("max_gen_len", (str(path), None))
        raise LlamakitError(f"key 'max_gen_len': {recipe.max_gen_len} leaves no room for the prompt in "
                            f"max_seq_len {recipe.max_seq_len}",
                            "make max_gen_len smaller than max_seq_len (prompt + generation must fit)",
                            place, line)
    if isinstance(recipe, Recipe):
        _check_decoding(recipe, path, sources)
    if isinstance(recipe.nproc, int) and recipe.nproc < 1:
        place, line = sources.get("nproc", (str(path), None))
        raise LlamakitError(f"key 'nproc': {recipe.nproc} is out of range", f"use {known['nproc'].allowed}",
                            place, line)
    return recipe


def _check_decoding(recipe: Recipe, path: Path, sources: dict[str, tuple[str, int | None]]) -> None:
    """Rules across the decoding keys (the vocabulary-dependent ones are checked once the tokenizer is known)."""
    if any(s == "" for s in ([recipe.stop] if isinstance(recipe.stop, str) else recipe.stop)):
        place, line = sources.get("stop", (str(path), None))
        raise LlamakitError("key 'stop': an empty stop string would stop at once", f"use {KEYS['stop'].allowed}",
                            place, line)
    settings = {k: getattr(recipe, k) for k in ("n", "temperature", "min_tokens", "stop_token_ids")}
    try:
        check_combination(settings, recipe.max_gen_len, 1 << 62, str(path), None)
    except LlamakitError as e:  # point at the line of the key it names
        key = "n" if e.what.startswith("key 'n'") else "min_tokens"
        place, line = sources.get(key, (str(path), None))
        raise LlamakitError(e.what, e.fix, place, line) from None


def load_recipe(path: str | Path, overrides: list[str] | None = None, flags: dict[str, Any] | None = None,
                schema: type[BaseModel] = Recipe, keys: dict[str, KeyInfo] | None = None) -> LoadedRecipe:
    """Read and validate a recipe file, apply `--set key=value` overrides and direct flags (e.g. --out);
    `schema`/`keys`: another command's recipe (llamakit score)."""
    path = find_recipe(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise LlamakitError(f"recipe is not UTF-8 text (byte {e.start})", "save it as UTF-8", path) from None
    lines = _key_lines(text, path)
    raw = yaml.safe_load(text)
    if raw is None:
        raise LlamakitError("recipe is empty", "see recipes/demo.yaml for an example", path)
    if not isinstance(raw, dict):
        raise LlamakitError("a recipe must be a mapping of `key: value` lines",
                            "see recipes/demo.yaml for an example", path, 1)
    sources: dict[str, tuple[str, int | None]] = {str(k): (str(path), ln) for k, ln in lines.items()}
    for text_item in overrides or []:
        key, value = parse_override(text_item)
        raw[key] = value
        sources[key] = (f"--set {text_item}", None)
    for flag, (key, value) in (flags or {}).items():
        if value is not None:
            raw[key] = value
            sources[key] = (f"{flag} {value}", None)
    return LoadedRecipe(validate_recipe(raw, path, sources, schema, keys), path, sources)


# ---------------------------------------------------------------- paths


def cache_dir() -> Path:
    """llamakit's cache: $LLAMAKIT_CACHE, else $XDG_CACHE_HOME/llamakit, else ~/.cache/llamakit."""
    if os.environ.get("LLAMAKIT_CACHE"):
        return Path(os.environ["LLAMAKIT_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "llamakit"


def demo_checkpoint() -> Path:
    """The built-in demo model: shipped in llamakit/assets/demo/ if present, else made once into the cache."""
    shipped = asset_path("demo")
    if (shipped / "params.json").is_file():
        return shipped
    target = cache_dir() / f"demo-{__version__}"
    if (target / "params.json").is_file():
        return target
    from llamakit.checkpoint.tiny import make_tiny

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        make_tiny(tmp / "ckpt", mp=1, style="llama2", seed=0)
        try:
            os.rename(tmp / "ckpt", target)  # atomic: a half-written demo model is never visible
        except OSError:
            if not (target / "params.json").is_file():  # not a concurrent winner: a real failure
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


BUILTINS = {"ckpt_dir": {"demo": demo_checkpoint},
            "prompt_path": {"demo-prompts.jsonl": lambda: asset_path("demo-prompts.jsonl")}}


def resolve_builtin(key: str, value: str, where: str = "command line") -> Path:
    """A path given on the command line: `builtin:NAME` = shipped data (as in recipes), else the path itself."""
    if value.startswith(BUILTIN):
        name = value[len(BUILTIN):]
        table = BUILTINS.get(key, {})
        if name not in table:
            known = ", ".join(BUILTIN + n for n in table) or "none"
            raise LlamakitError(f"unknown built-in {value!r}", f"use one of: {known}, or a path", where)
        return Path(table[name]()).resolve()
    return Path(value).expanduser().resolve()


def resolve_path(lr: LoadedRecipe, key: str, value: str) -> Path:
    """Absolute path for a recipe path value: `builtin:NAME` = shipped data, else relative to the working directory."""
    if value.startswith(BUILTIN):
        name = value[len(BUILTIN):]
        table = BUILTINS.get(key, {})
        if name not in table:
            place, line = lr.where(key)
            known = ", ".join(BUILTIN + n for n in table) or "none for this key"
            raise LlamakitError(f"key '{key}': unknown built-in {value!r}", f"use one of: {known}", place, line)
        return Path(table[name]()).resolve()
    return Path(value).expanduser().resolve()


@dataclass(frozen=True)
class RunPaths:
    """Every file a run reads or writes, as absolute paths."""

    ckpt_dir: Path
    tokenizer_path: Path | None  # None: find it next to the checkpoint
    prompt_path: Path
    out_path: Path
    log_path: Path
    run_dir: Path  # `.<out name>.llamakit/` next to out_path: plan, work list, per-rank errors, locks


def check_writable(lr: LoadedRecipe, key: str, path: Path) -> None:
    """An output file must be a file (or not exist yet) in a folder we can create and write."""
    place, line = lr.where(key)
    if path.is_dir():
        raise LlamakitError(f"key '{key}': {path} is a folder", "give a file name, e.g. generated.jsonl", place, line)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise LlamakitError(f"key '{key}': cannot write {path} (no write permission in {folder})",
                            "choose a path in a folder you can write to", place, line)


def resolve_paths(lr: LoadedRecipe) -> RunPaths:
    """Resolve the recipe's paths (relative ones against the current working directory)."""
    r = lr.recipe
    out = resolve_path(lr, "out_path", r.out_path)
    log = resolve_path(lr, "logging_path", r.logging_path) if r.logging_path else out.with_suffix(".log")
    prompts = resolve_path(lr, "prompt_path", r.prompt_path)
    for key, path, other, other_key in (("logging_path", log, out, "out_path"), ("out_path", out, prompts, "prompt_path"),
                                        ("logging_path", log, prompts, "prompt_path")):
        if path == other:
            place, line = lr.where(key)
            raise LlamakitError(f"key '{key}' is the same file as {other_key} ({path})",
                                "write the output and the log to files of their own", place, line)
    for key, path in (("out_path", out), ("logging_path", log)):
        check_writable(lr, key, path)
    return RunPaths(
        ckpt_dir=resolve_path(lr, "ckpt_dir", r.ckpt_dir),
        tokenizer_path=resolve_path(lr, "tokenizer_path", r.tokenizer_path) if r.tokenizer_path else None,
        prompt_path=prompts,
        out_path=out,
        log_path=log,
        run_dir=run_dir_for(out),
    )


def run_dir_for(out_path: Path) -> Path:
    """The run folder of an output file: `.<out name>.llamakit/` next to it."""
    return out_path.parent / f".{out_path.name}.llamakit"


def check_recipe_text(text: str, where: Path) -> None:
    """Validate a recipe's text as load_recipe would (file:line in every message), without reading a file:
    new-recipe checks what it wrote before saving it."""
    lines = _key_lines(text, where)
    validate_recipe(yaml.safe_load(text), where, {k: (str(where), ln) for k, ln in lines.items()})
