"""Prompts in: the input file (.jsonl / .txt, checked line by line), the long-prompt policy, and the work list for the workers."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Literal

from llamakit.chat import CHAT_FORMATS, check_tokenizer, encode_prompt, messages_of
from llamakit.errors import LlamakitError
from llamakit.run.output import RESERVED, id_key
from llamakit.tokenizer import Tokenizer

PARAMS_FIELD = "params"  # a row's own settings (an object); its chat_format overrides the recipe's


@dataclass
class Prompt:
    """One prompt of the input file."""

    index: int  # 0-based line index in the file: the engine's Request.key (stable across resumes)
    line: int  # 1-based line number, for messages
    id: str | int  # the id field, or the line number when the line has none
    text: str | list[dict[str, str]]  # plain text, or chat messages [{role, content}] (chat formats only)
    extra: dict[str, Any] = field(default_factory=dict)  # every other field, passed through to the output
    params: Any = None  # the params_field's value: this prompt's own decoding settings (run.decoding checks it)
    chat_format: str | None = None  # the row's own (params.chat_format); None: the recipe's


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """(0-based index, text) of each line, strictly UTF-8 (a leading BOM is dropped); bad bytes name file:line."""
    if not path.exists():
        raise LlamakitError("prompt file does not exist", "check prompt_path (relative paths start at the "
                            f"working directory {Path.cwd()})", path)
    if not path.is_file():
        raise LlamakitError("prompt_path is not a file", "point prompt_path to a .jsonl or .txt file", path)
    with open(path, "rb") as f:
        for i, raw in enumerate(f):
            if i == 0 and raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise LlamakitError(f"not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1})",
                                    "re-save the file as UTF-8 (e.g. `iconv -f latin1 -t utf-8 in > out`)",
                                    path, i + 1) from None
            yield i, text.rstrip("\r\n")


def _row_chat_format(obj: dict[str, Any], path: Path, line: int, params_field: str = PARAMS_FIELD) -> str | None:
    """A row's own chat_format from its params object, checked; None when it has none."""
    params = obj.get(params_field)
    if not isinstance(params, dict) or "chat_format" not in params:
        return None
    fmt = params["chat_format"]
    if fmt not in CHAT_FORMATS:
        raise LlamakitError(f"{params_field}.chat_format is {fmt!r}", f"use one of: {', '.join(CHAT_FORMATS)}",
                            path, line)
    return fmt


def records(path: Path, what: str, example_field: str) -> tuple[bool, Iterator[tuple[int, int, Any]]]:
    """A .jsonl (.json, .ndjson) or .txt file of `what`s (prompt, text), checked by type now: (is it .txt, the
    non-blank lines as (0-based index, line number, the JSON object or, for .txt, the line's text)). A line that is
    not JSON, or not an object, is a LlamakitError naming file:line (raised while iterating)."""
    is_txt = path.suffix.lower() == ".txt"
    if not is_txt and path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise LlamakitError(f"unknown {what} file type {path.suffix or '(no suffix)'!r}",
                            f"use .jsonl (one JSON object per line) or .txt (one {what} per line)", path)

    def rows() -> Iterator[tuple[int, int, Any]]:
        for index, text in _lines(path):
            if not text.strip():
                continue
            line = index + 1
            if is_txt:
                yield index, line, text
                continue
            try:
                obj = json.loads(text)
            except json.JSONDecodeError as e:
                example = f"{{\"id\": 1, \"{example_field}\": \"...\"}}"
                raise LlamakitError(f"not valid JSON ({e.msg.removesuffix(' at')}, at column {e.colno})",
                                    f"each line must be one JSON object, e.g. {example}", path, line) from None
            if not isinstance(obj, dict):
                raise LlamakitError(f"line is a JSON {type(obj).__name__}, not an object",
                                    f"write one object per line, e.g. {{\"{example_field}\": \"...\"}}", path, line)
            yield index, line, obj

    return is_txt, rows()


def unique_id(obj: dict, id_field: str, line: int, seen: dict[str, int], path: Path, found: str) -> str | int:
    """The row's id (its line number when it has none), checked: a string or integer, not seen before on another
    line (`seen`: id key -> line, updated); `found` says what resume finds by id (e.g. "finished prompts")."""
    rid = obj.get(id_field, line)
    if isinstance(rid, bool) or not isinstance(rid, (str, int)):
        raise LlamakitError(f"field '{id_field}' is {type(rid).__name__}, not a string or integer",
                            "use string or integer ids (or set id_field in the recipe)", path, line)
    k = id_key(rid)
    if k in seen:
        raise LlamakitError(f"duplicate id {rid!r} (also on line {seen[k]})",
                            f"give every line a unique id (resume finds {found} by id)", path, line)
    seen[k] = line
    return rid


def read_prompts(path: Path, prompt_field: str = "prompt", id_field: str = "id",
                 chat_format: str = "none", params_field: str = PARAMS_FIELD) -> list[Prompt]:
    """Read every prompt; blank lines are ignored, anything else that is not a usable prompt is an error. With a
    chat format (the recipe's or the row's) a prompt may be a list of {role, content} messages, checked here."""
    path = Path(path)
    is_txt, rows = records(path, "prompt", prompt_field)
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    for index, line, obj in rows:
        if is_txt:
            prompts.append(Prompt(index, line, line, obj))
            continue
        if prompt_field not in obj:
            keys = ", ".join(list(obj)[:6]) or "none"
            raise LlamakitError(f"no '{prompt_field}' field (fields: {keys})",
                                "add it, or set prompt_field in the recipe to the field holding the prompt",
                                path, line)
        value = obj[prompt_field]
        row_format = _row_chat_format(obj, path, line, params_field)
        if (row_format or chat_format) != "none" and not isinstance(value, str):
            messages_of(value, path, line)  # roles, alternation, types: file:line before anything starts
        elif not isinstance(value, str):
            hint = " (a list of messages needs chat_format: llama2-chat or llama3-instruct)" \
                if isinstance(value, list) else ""
            raise LlamakitError(f"field '{prompt_field}' is {type(value).__name__}, not text{hint}",
                                "make the prompt a JSON string", path, line)
        if isinstance(value, str) and not value.strip():
            raise LlamakitError(f"field '{prompt_field}' is empty", "remove the line or give it a prompt",
                                path, line)
        extra = {k: v for k, v in obj.items() if k not in (prompt_field, id_field, params_field)}
        clash = sorted(RESERVED & set(extra))
        if clash:
            raise LlamakitError(f"field '{clash[0]}' would be overwritten by the output field of that name",
                                "rename it in the input (or point prompt_field/id_field at it)", path, line)
        pid = unique_id(obj, id_field, line, seen, path, "finished prompts")
        prompts.append(Prompt(index, line, pid, value, extra, obj.get(params_field), row_format))
    if not prompts:
        raise LlamakitError("prompt file has no prompts",
                            "add one prompt per line" if is_txt else "add one JSON object per line", path)
    return prompts


# ---------------------------------------------------------------- tokens and the long-prompt policy


@dataclass
class Prepared:
    """A prompt's tokens after the length policy; `skipped` prompts get a row without generation."""

    prompt: Prompt
    tokens: list[int]
    n_tokens: int  # tokens of the full prompt (bos included)
    truncated: bool = False
    skipped: bool = False
    samples: list[int] = field(default_factory=lambda: [0])  # samples still to write (resume is by id, sample)
    settings: dict[str, Any] = field(default_factory=dict)  # decoding settings (run.decoding), max_gen_len included
    recorded: dict[str, Any] = field(default_factory=dict)  # the ones that differ from the recipe (in its rows)


def prompt_encoder(tok: Tokenizer, chat_format: str, path: Path,
                   recipe_where: str | None = None) -> Callable[[list[Prompt]], list[list[int]]]:
    """prompts -> token ids (bos included): plain text in one batch call, chat prompts in their format (the row's,
    else the recipe's), each format checked against the tokenizer's kind."""

    def encode(prompts: list[Prompt]) -> list[list[int]]:
        if chat_format != "none":
            check_tokenizer(chat_format, tok, recipe_where)
        fmts = [p.chat_format or chat_format for p in prompts]
        plain = [p.text for p, f in zip(prompts, fmts) if f == "none"]
        plain_ids = iter([tok.bos_id] + ids for ids in tok.encode_batch(plain))  # type: ignore[arg-type]
        out = []
        for p, f in zip(prompts, fmts):
            if f == "none":
                out.append(next(plain_ids))
                continue
            if p.chat_format:
                check_tokenizer(f, tok, f"{path}:{p.line}")
            out.append(encode_prompt(tok, f, p.text, path, p.line))
        return out

    return encode


def prepare(prompts: list[Prompt], encode: Callable[[list[Prompt]], list[list[int]]],
            max_prompt_len: int | Callable[[Prompt], int],
            policy: Literal["error", "truncate", "skip"], path: Path, hint: str = "",
            chat_format: str = "none") -> list[Prepared]:
    """Tokenize (with bos) and apply the long-prompt policy; `error` stops at the first long prompt with file:line.
    A chat prompt is never truncated (that would cut the open assistant header the model answers after).
    `max_prompt_len` may depend on the prompt (its own max_gen_len)."""
    out: list[Prepared] = []
    too_long: list[Prepared] = []
    for p, toks in zip(prompts, encode(prompts)):
        item = Prepared(p, toks, len(toks))
        limit = max_prompt_len(p) if callable(max_prompt_len) else max_prompt_len
        if len(toks) > limit:
            too_long.append(item)
            if policy == "truncate" and (p.chat_format or chat_format) != "none":
                raise LlamakitError(f"chat prompt has {len(toks)} tokens, more than max_seq_len - max_gen_len = "
                                    f"{limit}; truncating would cut the conversation's end",
                                    f"raise max_seq_len, lower max_gen_len, shorten it, or set on_long_prompt: "
                                    f"skip{hint}", path, p.line)
            if policy == "truncate":
                item.tokens, item.truncated = toks[:limit], True
            elif policy == "skip":
                item.tokens, item.skipped = [], True
        out.append(item)
    if too_long and policy == "error":
        first = too_long[0]
        more = f" ({len(too_long) - 1} more prompts are too long)" if len(too_long) > 1 else ""
        limit = max_prompt_len(first.prompt) if callable(max_prompt_len) else max_prompt_len
        raise LlamakitError(f"prompt has {first.n_tokens} tokens, more than max_seq_len - max_gen_len = "
                            f"{limit}{more}",
                            f"raise max_seq_len, lower max_gen_len, or set on_long_prompt: truncate or skip{hint}",
                            path, first.prompt.line)
    return out


def write_work(todo: list[Prepared], path: Path, with_skipped: bool = False) -> None:
    """The workers' input: one line per prompt to generate (key, tokens, what the output row needs); with_skipped
    (part files) also lists the prompts on_long_prompt skips, whose row the replica writes without generating."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for t in todo:
            p = t.prompt
            if t.skipped:
                if with_skipped:
                    for sample in t.samples:
                        f.write(json.dumps({"key": p.index, "skipped": True, "n_tokens": t.n_tokens, "id": p.id,
                                            "prompt": p.text, "extra": p.extra, "sample": sample,
                                            "recorded": t.recorded}, ensure_ascii=False) + "\n")
                continue
            for sample in t.samples:  # one request per sample still missing from the output
                f.write(json.dumps({"key": p.index, "tokens": t.tokens, "id": p.id, "prompt": p.text,
                                    "extra": p.extra, "truncated": t.truncated, "sample": sample,
                                    "settings": t.settings, "recorded": t.recorded}, ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def iter_work(path: Path) -> Iterable[dict[str, Any]]:
    """Entries of the work list the launcher wrote for the workers (one JSON object per line)."""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                yield json.loads(raw)
