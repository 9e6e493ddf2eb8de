"""Prompt files in (.jsonl / .txt, checked line by line) and the output JSONL out: append-safe writer, resume, final order."""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from llamakit.errors import LlamakitError

# Fields every output row starts with, in this order; the input's other fields follow unchanged.
OUTPUT_FIELDS = ("id", "prompt", "completion", "prompt_tokens", "completion_tokens", "finish_reason")
RESERVED = set(OUTPUT_FIELDS) | {"truncated"}


@dataclass
class Prompt:
    """One prompt of the input file."""

    index: int  # 0-based line index in the file: the engine's Request.key (stable across resumes)
    line: int  # 1-based line number, for messages
    id: str | int  # the id field, or the line number when the line has none
    text: str
    extra: dict[str, Any] = field(default_factory=dict)  # every other field, passed through to the output


def id_key(value: Any) -> str:
    """Canonical form of an id for comparing input and output (7 and "7" stay different)."""
    return json.dumps(value, ensure_ascii=False)


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


def read_prompts(path: Path, prompt_field: str = "prompt", id_field: str = "id") -> list[Prompt]:
    """Read every prompt; blank lines are ignored, anything else that is not a usable prompt is an error."""
    path = Path(path)
    is_txt = path.suffix.lower() == ".txt"
    if not is_txt and path.suffix.lower() not in (".jsonl", ".json", ".ndjson"):
        raise LlamakitError(f"unknown prompt file type {path.suffix or '(no suffix)'!r}",
                            "use .jsonl (one JSON object per line) or .txt (one prompt per line)", path)
    prompts: list[Prompt] = []
    seen: dict[str, int] = {}
    for index, text in _lines(path):
        if not text.strip():
            continue
        line = index + 1
        if is_txt:
            prompts.append(Prompt(index, line, line, text))
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise LlamakitError(f"not valid JSON ({e.msg.removesuffix(' at')}, at column {e.colno})",
                                "each line must be one JSON object, e.g. {\"id\": 1, \"prompt\": \"...\"}",
                                path, line) from None
        if not isinstance(obj, dict):
            raise LlamakitError(f"line is a JSON {type(obj).__name__}, not an object",
                                f"write one object per line, e.g. {{\"{prompt_field}\": \"...\"}}", path, line)
        if prompt_field not in obj:
            keys = ", ".join(list(obj)[:6]) or "none"
            raise LlamakitError(f"no '{prompt_field}' field (fields: {keys})",
                                "add it, or set prompt_field in the recipe to the field holding the prompt",
                                path, line)
        value = obj[prompt_field]
        if not isinstance(value, str):
            raise LlamakitError(f"field '{prompt_field}' is {type(value).__name__}, not text",
                                "make the prompt a JSON string", path, line)
        if not value.strip():
            raise LlamakitError(f"field '{prompt_field}' is empty", "remove the line or give it a prompt",
                                path, line)
        pid = obj.get(id_field, line)
        if isinstance(pid, bool) or not isinstance(pid, (str, int)):
            raise LlamakitError(f"field '{id_field}' is {type(pid).__name__}, not a string or integer",
                                "use string or integer ids (or set id_field in the recipe)", path, line)
        extra = {k: v for k, v in obj.items() if k not in (prompt_field, id_field)}
        clash = sorted(RESERVED & set(extra))
        if clash:
            raise LlamakitError(f"field '{clash[0]}' would be overwritten by the output field of that name",
                                "rename it in the input (or point prompt_field/id_field at it)", path, line)
        k = id_key(pid)
        if k in seen:
            raise LlamakitError(f"duplicate id {pid!r} (also on line {seen[k]})",
                                "give every line a unique id (resume finds finished prompts by id)", path, line)
        seen[k] = line
        prompts.append(Prompt(index, line, pid, value, extra))
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


def prepare(prompts: list[Prompt], encode: Any, max_prompt_len: int,
            policy: Literal["error", "truncate", "skip"], path: Path, hint: str = "") -> list[Prepared]:
    """Tokenize (with bos) and apply the long-prompt policy; `error` stops at the first long prompt with file:line."""
    out: list[Prepared] = []
    too_long: list[Prepared] = []
    for p, toks in zip(prompts, encode([p.text for p in prompts])):
        item = Prepared(p, toks, len(toks))
        if len(toks) > max_prompt_len:
            too_long.append(item)
            if policy == "truncate":
                item.tokens, item.truncated = toks[:max_prompt_len], True
            elif policy == "skip":
                item.tokens, item.skipped = [], True
        out.append(item)
    if too_long and policy == "error":
        first = too_long[0]
        more = f" ({len(too_long) - 1} more prompts are too long)" if len(too_long) > 1 else ""
        raise LlamakitError(f"prompt has {first.n_tokens} tokens, more than max_seq_len - max_gen_len = "
                            f"{max_prompt_len}{more}",
                            f"raise max_seq_len, lower max_gen_len, or set on_long_prompt: truncate or skip{hint}",
                            path, first.prompt.line)
    return out


def output_row(prompt_id: Any, text: str, extra: dict[str, Any], completion: str, prompt_tokens: int,
               completion_tokens: int, finish_reason: str, truncated: bool = False) -> dict[str, Any]:
    """One output object: the fixed fields first, `truncated` only when true, then the input's other fields."""
    row: dict[str, Any] = {"id": prompt_id, "prompt": text, "completion": completion,
                           "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "finish_reason": finish_reason}
    if truncated:
        row["truncated"] = True
    row.update(extra)
    return row


def encode_row(row: dict[str, Any]) -> bytes:
    """One JSONL line, UTF-8, non-ASCII kept as is (umlauts stay readable)."""
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------- output file: writer, repair, resume, final order


class RowWriter:
    """Append-only JSONL writer: each row is one os.write under flock, fsync every `every` rows or `seconds`."""

    def __init__(self, path: Path, every: int = 64, seconds: float = 2.0):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.every, self.seconds = every, seconds
        self.pending = 0
        self.last_sync = time.monotonic()
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        data = encode_row(row)
        fcntl.flock(self.fd, fcntl.LOCK_EX)  # DP replicas append to the same file
        try:
            view = memoryview(data)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.rows += 1
        self.pending += 1
        if self.pending >= self.every or time.monotonic() - self.last_sync >= self.seconds:
            self.sync()

    def sync(self) -> None:
        if self.pending:
            os.fsync(self.fd)
            self.pending = 0
        self.last_sync = time.monotonic()

    def close(self) -> None:
        if self.fd >= 0:
            self.sync()
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RowWriter":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def torn_tail(path: Path) -> int:
    """Bytes after the last newline (a row cut by a kill); 0 when the file ends cleanly or does not exist."""
    if not path.is_file():
        return 0
    size = path.stat().st_size
    if size == 0:
        return 0
    with open(path, "rb") as f:
        pos = size
        block = 1 << 16
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            chunk = f.read(pos - start)
            nl = chunk.rfind(b"\n")
            if nl >= 0:
                return size - (start + nl + 1)
            pos = start
    return size


def repair_tail(path: Path) -> int:
    """Cut a torn last line off the output (it is regenerated on resume); returns the bytes removed."""
    cut = torn_tail(path)
    if cut:
        size = path.stat().st_size
        with open(path, "r+b") as f:
            f.truncate(size - cut)
            f.flush()
            os.fsync(f.fileno())
    return cut


def read_rows(path: Path, ignore_torn_tail: bool = True) -> list[tuple[int, dict[str, Any]]]:
    """(line, row) of every complete row of an output file; a damaged row other than a torn tail is an error."""
    if not path.is_file():
        return []
    data = path.read_bytes()
    cut = torn_tail(path) if ignore_torn_tail else 0
    if cut:
        data = data[: len(data) - cut]
    rows = []
    for i, raw in enumerate(data.split(b"\n")):
        if not raw.strip():
            continue
        try:
            row = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise LlamakitError("output row is damaged (not a JSON line)",
                                "delete that line; its prompt will be generated again on the next run",
                                path, i + 1) from None
        if not isinstance(row, dict) or "id" not in row:
            raise LlamakitError("output row has no 'id'", "this is not a llamakit output file: choose another "
                                "out_path, or delete the line", path, i + 1)
        rows.append((i + 1, row))
    return rows


@dataclass
class OutputState:
    """What an existing output file already holds, checked against the prompts."""

    done: set[str]  # id keys already written
    torn_bytes: int  # bytes of a torn last line (repaired at start)
    duplicates: int  # rows whose id appeared before (kept once by finalize)


def scan_output(path: Path, prompts: list[Prompt]) -> OutputState:
    """Ids already in `path`; rows for ids that are not in the prompt file, or made from another text for their
    id, are an error (another dataset, or an edited prompt file)."""
    wanted = {id_key(p.id): p for p in prompts}
    done: set[str] = set()
    dups = 0
    for line, row in read_rows(path):
        k = id_key(row["id"])
        if k not in wanted:
            raise LlamakitError(f"output already holds id {row['id']!r}, which is not in the prompt file",
                                "it was written from other prompts: choose a new out_path, or move this file away",
                                path, line)
        p = wanted[k]
        if "prompt" not in p.extra and isinstance(row.get("prompt"), str) and row["prompt"] != p.text:
            raise LlamakitError(f"the row for id {row['id']!r} was generated from another text than the prompt file "
                                f"now holds for that id (line {p.line})", "the prompt file changed since: give a "
                                "new output file (--out NEW.jsonl), or restore the old prompts", path, line)
        if k in done:
            dups += 1
        done.add(k)
    return OutputState(done, torn_tail(path), dups)


def finalize_output(path: Path, prompts: list[Prompt]) -> int:
    """Rewrite the output in input order, each id once, atomically (temp file + rename); returns rows written."""
    order = {id_key(p.id): i for i, p in enumerate(prompts)}
    best: dict[str, dict[str, Any]] = {}
    for _, row in read_rows(path):
        best.setdefault(id_key(row["id"]), row)  # the first row of an id wins
    rows = sorted(best.items(), key=lambda kv: order.get(kv[0], len(order)))
    tmp = path.with_name(f".{path.name}.sorting")
    with open(tmp, "wb") as f:
        for _, row in rows:
            f.write(encode_row(row))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # a kill before this line leaves the old (complete, unordered) file in place
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return len(rows)


def iter_work(path: Path) -> Iterable[dict[str, Any]]:
    """Entries of the work list the launcher wrote for the workers (one JSON object per line)."""
    with open(path, encoding="utf-8") as f:
        for raw in f:
            if raw.strip():
                yield json.loads(raw)
