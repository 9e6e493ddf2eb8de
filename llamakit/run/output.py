"""The output JSONL: row format, append-safe writer, torn-tail repair, what it already holds, and finishing a run."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from llamakit.errors import LlamakitError
from llamakit.run.decoding import ROW_FIELDS, row_key
from llamakit.units import human_bytes

if TYPE_CHECKING:
    from llamakit.run.plan import Setup
    from llamakit.run.prompts import Prompt

log = logging.getLogger("llamakit.run")

# Fields every output row starts with, in this order; the input's other fields follow unchanged.
OUTPUT_FIELDS = ("id", "prompt", "completion", "prompt_tokens", "completion_tokens", "finish_reason")
RESERVED = set(OUTPUT_FIELDS) | {"truncated"} | ROW_FIELDS


def id_key(value: Any) -> str:
    """Canonical form of an id for comparing input and output (7 and "7" stay different)."""
    return json.dumps(value, ensure_ascii=False)


def output_row(prompt_id: Any, text: str, extra: dict[str, Any], completion: str, prompt_tokens: int,
               completion_tokens: int, finish_reason: str, truncated: bool = False,
               decoding: dict[str, Any] | None = None) -> dict[str, Any]:
    """One output object: the fixed fields first, the decoding fields (sample, stop_reason, params, logprobs: see
    run.decoding), `truncated` only when true, then the input's other fields."""
    row: dict[str, Any] = {"id": prompt_id, "prompt": text, "completion": completion,
                           "prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                           "finish_reason": finish_reason}
    row.update(decoding or {"sample": 0})
    if truncated:
        row["truncated"] = True
    row.update(extra)
    return row


def encode_row(row: dict[str, Any]) -> bytes:
    """One JSONL line, UTF-8, non-ASCII kept as is (umlauts stay readable)."""
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


# ---------------------------------------------------------------- output file: writer, repair, resume, final order


class RowWriter:
    """Append-only JSONL writer: each row is one os.write (under flock when `lock`: DP replicas append to the same
    file), fsync every `every` rows or `seconds`."""

    def __init__(self, path: Path, every: int = 64, seconds: float = 2.0, lock: bool = True):
        self.path = Path(path)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.every, self.seconds, self.lock = every, seconds, lock
        self.pending = 0
        self.last_sync = time.monotonic()
        self.rows = 0

    def write(self, row: dict[str, Any]) -> None:
        view = memoryview(encode_row(row))
        if self.lock:
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        try:
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        finally:
            if self.lock:
                fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.rows += 1
        self.pending += 1
        if self.pending >= self.every or time.monotonic() - self.last_sync >= self.seconds:
            self.sync()

    def sync(self) -> None:
        if self.pending:
            os.fsync(self.fd)  # on NFS this is also what makes the rows visible to the other hosts
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

    done: set[str]  # id keys with a row already written
    torn_bytes: int  # bytes of a torn last line (repaired at start)
    duplicates: int  # rows whose (id, sample) appeared before (kept once by finalize)
    rows: set[str] = field(default_factory=set)  # (id, sample) keys already written (run.decoding.row_key)


def scan_output(path: Path, prompts: list[Prompt],
                expect: Callable[[Prompt], tuple[int, dict[str, Any]]] | None = None) -> OutputState:
    """Ids and (id, sample) keys already in `path` and its part files (a multi-node run's rows); rows for ids that
    are not in the prompt file, or made from another text for their id, are an error (another dataset, or an
    edited prompt file). `expect(prompt)` gives the prompt's samples (n) and the settings its rows record (those
    differing from the recipe): a row made with others is an error too (the prompt file's per-row settings
    changed)."""
    from llamakit.run.parts import output_files  # parts builds on this module's row format

    wanted = {id_key(p.id): p for p in prompts}
    done: set[str] = set()
    rows: set[str] = set()
    dups = 0
    for file in output_files(path):
        for line, row in read_rows(file):
            k = id_key(row["id"])
            if k not in wanted:
                raise LlamakitError(f"output already holds id {row['id']!r}, which is not in the prompt file",
                                    "it was written from other prompts: choose a new out_path, or move this file "
                                    "away", file, line)
            p = wanted[k]
            if "prompt" not in p.extra and isinstance(row.get("prompt"), str) and row["prompt"] != p.text:
                raise LlamakitError(f"the row for id {row['id']!r} was generated from another text than the prompt "
                                    f"file now holds for that id (line {p.line})", "the prompt file changed since: "
                                    "give a new output file (--out NEW.jsonl), or restore the old prompts", file, line)
            sample = row.get("sample", 0)
            if expect is not None:
                _check_row_settings(row, sample, p, *expect(p), file, line)
            rk = row_key(row["id"], sample)
            if rk in rows:
                dups += 1
            rows.add(rk)
            done.add(k)
    return OutputState(done, torn_tail(path), dups, rows)


def _check_row_settings(row: dict[str, Any], sample: Any, p: Prompt, n: int, recorded: dict[str, Any], path: Path,
                        line: int) -> None:
    if not isinstance(sample, int) or not 0 <= sample < n:
        raise LlamakitError(f"the row for id {row['id']!r} is sample {sample!r}, but the prompt now asks for n = {n} "
                            f"samples (line {p.line})", "resume with the n it was started with, or give a new output "
                            "file (--out NEW.jsonl)", path, line)
    if row.get("params", {}) != recorded:
        def show(d: dict[str, Any]) -> str:
            return json.dumps(d, ensure_ascii=False) if d else "the recipe's"
        raise LlamakitError(f"the row for id {row['id']!r} was made with settings {show(row.get('params', {}))}, the "
                            f"prompt file now gives {show(recorded)} (line {p.line})", "resume with the settings it "
                            "was started with, or give a new output file (--out NEW.jsonl)", path, line)


def finalize_output(path: Path, prompts: list[Prompt]) -> int:
    """Rewrite the output (with the rows of any part files) in input order, each (id, sample) once, atomically
    (temp file + rename); returns rows written."""
    from llamakit.run.parts import merge_parts

    return merge_parts(path, [p.id for p in prompts], require_complete=False)


# ---------------------------------------------------------------- finishing a run (under the run's lock)


@dataclass
class Summary:
    """What a run did; printed by the CLI and written to the log."""

    out_path: str
    log_path: str
    total: int
    already_done: int
    generated: int
    skipped: int
    truncated: int
    tokens: int
    seconds: float  # the whole run, start-up included
    notes: list[str] = field(default_factory=list)
    gen_seconds: float = 0.0  # since generation began (llamakit.run.progress: the one tok/s definition)
    replica_tokens: int = 0  # generated by the workers of this run, and their (slowest replica's) generating time
    replica_seconds: float = 0.0
    merged_elsewhere: bool = False  # a node of a multi-node run (or a share) whose rows another process merges

    def lines(self) -> list[str]:
        if self.merged_elsewhere:
            return [f"{self.total} prompts: {self.generated} to generate in this run over all nodes, "
                    f"{self.already_done} were already done (resumed)", f"output: {self.out_path}",
                    f"log: {self.log_path}"] + self.notes
        rate = (f", {self.tokens / self.gen_seconds:.1f} tok/s after loading the model"
                if self.gen_seconds > 0 and self.tokens else "")
        if self.replica_seconds > 0 and self.replica_tokens:
            rate += f" ({self.replica_tokens / self.replica_seconds:.1f} tok/s while the engine generated)"
        out = [f"{self.total} prompts: {self.generated} generated now, {self.already_done} were already in the "
               f"output (resumed), {self.skipped} skipped as too long, {self.truncated} truncated",
               f"{self.tokens} tokens generated in {self.seconds:.1f} s including start-up{rate}",
               f"output: {self.out_path}", f"log: {self.log_path}"]
        return out + self.notes


def clean_run_dir(run_dir: Path) -> None:
    """After success, under the lock: keep only `lock` (removing it under a waiting run would let two in),
    plan.json (the settings this output was made with, so a re-run with other settings is told so) and the status
    files (`llamakit status` reports the finished run)."""
    for entry in run_dir.iterdir():
        if entry.name in ("lock", "plan.json") or entry.name.startswith("lock.node") or \
                (entry.name.startswith("status") and entry.suffix == ".json"):  # lock.nodeR: multi-node runs
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def prepare_output(setup: Setup) -> int:
    """Clear leftovers of a killed run, cut a torn last row, write the rows of skipped prompts; returns them.
    With part files (several nodes, or a share) out_path is left alone: its replicas write the skipped rows, and the
    merge drops a torn last line."""
    out_path, run_dir = Path(setup.plan.out_path), Path(setup.plan.run_dir)
    for stale in [*run_dir.glob("error.rank*.json"), *run_dir.glob("ready.dp*"),
                  *run_dir.glob("generation.replica*.json")]:
        stale.unlink(missing_ok=True)
    if setup.plan.nodes:
        return sum(1 for t in setup.todo if t.skipped)
    out_path.with_name(f".{out_path.name}.sorting").unlink(missing_ok=True)
    cut = repair_tail(out_path)
    if cut:
        log.info("repaired the output: cut a torn last line of %d bytes (its prompt is generated again)", cut)
    skipped = [t for t in setup.todo if t.skipped]
    if skipped:
        with RowWriter(out_path) as w:
            for t in skipped:
                p = t.prompt
                for sample in t.samples:
                    w.write(output_row(p.id, p.text, p.extra, "", t.n_tokens, 0, "skipped",
                                       decoding={"sample": sample, **({"params": t.recorded} if t.recorded else {})}))
        log.info("wrote %d rows with finish_reason skipped (prompt too long, on_long_prompt: skip)", len(skipped))
    return len(skipped)


def finish(setup: Setup, n_skipped: int, t0: float, gen_seconds: float = 0.0) -> Summary:
    """Check every prompt has its row, rewrite the file in input order, and sum up."""
    plan, out_path = setup.plan, Path(setup.plan.out_path)
    state = scan_output(out_path, setup.prompts)
    missing = [(t.prompt, s) for t in setup.todo for s in t.samples if row_key(t.prompt.id, s) not in state.rows]
    if missing:
        raise LlamakitError(f"the workers finished but {len(missing)} rows are missing (first: id "
                            f"{missing[0][0].id!r}, sample {missing[0][1]})", "re-run the same command to complete "
                            "them", out_path)
    rows = finalize_output(out_path, setup.prompts)
    log.info("wrote %d rows in input order", rows)
    generated = [t for t in setup.todo if not t.skipped]
    tokens = _tokens_of(out_path, {row_key(t.prompt.id, s) for t in generated for s in t.samples})
    summary = Summary(str(out_path), plan.log_path, plan.total, plan.already_done,
                      sum(len(t.samples) for t in generated), n_skipped,
                      sum(1 for t in generated if t.truncated), tokens, time.monotonic() - t0,
                      [f"note: {n}" for n in plan.notes], gen_seconds, *_generation_stats(Path(plan.run_dir)))
    for line in summary.lines():
        log.info("summary: %s", line)
    return summary

def _generation_stats(run_dir: Path) -> tuple[int, float]:
    """Tokens the replicas generated and the longest replica's generating time (engine built to last row)."""
    tokens, seconds = 0, 0.0
    for f in run_dir.glob("generation.replica*.json"):
        try:
            d = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        tokens += int(d.get("tokens", 0))
        seconds = max(seconds, float(d.get("seconds", 0.0)))
    return tokens, seconds


def finish_elsewhere(setup: Setup, nodes: Any, t0: float) -> Summary:
    """This node's part is done and another process orders out_path (the merging node, or `llamakit merge` after
    every share of an array): check this node's prompts have rows, and say who merges."""
    plan, out_path = setup.plan, Path(setup.plan.out_path)
    if nodes.share is not None:
        state = scan_output(out_path, setup.prompts)
        k, n = nodes.share
        missing = [p for i, p in enumerate(setup.prompts) if i % n == k and id_key(p.id) not in state.done]
        if missing:
            raise LlamakitError(f"the workers finished but {len(missing)} prompts of this share have no row "
                                f"(first: id {missing[0].id!r})", "re-run the same command to complete them",
                                out_path)
        note = (f"note: {nodes.label()} is complete; when every share is, merge them: llamakit merge {out_path}")
    else:
        note = f"note: {nodes.label()} is done; the node that ran rank 0 merged the rows into {out_path}"
    generated = [t for t in setup.todo if not t.skipped]
    summary = Summary(str(out_path), plan.log_path, plan.total, plan.already_done, len(generated),
                      sum(1 for t in setup.todo if t.skipped), sum(1 for t in generated if t.truncated), 0,
                      time.monotonic() - t0, [f"note: {n}" for n in plan.notes] + [note], merged_elsewhere=True)
    for line in summary.lines():
        log.info("summary: %s", line)
    return summary


def _tokens_of(path: Path, keys: set[str]) -> int:
    total = 0
    with open(path, encoding="utf-8") as f:
        for raw in f:
            row = json.loads(raw)
            if row_key(row["id"], row.get("sample", 0)) in keys:
                total += int(row.get("completion_tokens", 0))
    return total


def space_note(out_path: Path, todo: list[Any], max_gen_len: int) -> str | None:
    """A warning when the disk under the output has less free space than the run will write: one row per sample
    still to write (n per prompt), each its prompt and extra fields as given, at most its max_gen_len tokens of
    about 4 bytes each in JSON (with logprobs K, about 40 + 30 K bytes more per token), 120 bytes of fields; plus
    a second copy of the whole file while it is put in input order at the end."""
    rows = sum(len(t.samples) * row_bytes(t, max_gen_len) for t in todo if not t.skipped)
    existing = out_path.stat().st_size if out_path.is_file() else 0
    need = rows + existing + rows  # the rows, then the ordered copy of everything
    folder = out_path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return None
    if free >= need:
        return None
    return (f"the output may need up to {human_bytes(need)} (its rows, and a second copy while they are put in input "
            f"order at the end), but only {human_bytes(free)} is free on the disk of {folder}: free space or set "
            "out_path to another disk; a full disk stops the run (rows so far are kept)")


def row_bytes(t: Any, max_gen_len: int) -> int:
    """At most how many bytes one row of this prepared prompt takes (see space_note)."""
    gen = int(t.settings.get("max_gen_len", max_gen_len))
    k = t.settings.get("logprobs")
    per_token = 4 + (40 + 30 * int(k) if k is not None else 0)
    return len(encode_row({"prompt": t.prompt.text, **t.prompt.extra})) + 120 + per_token * gen


def disk_full_error(out_path: Path) -> LlamakitError:
    """The one line for a full disk under the output (worker and launcher say the same)."""
    return LlamakitError(f"no space left on device writing {out_path}; the rows written so far are kept",
                         f"free space on that disk (`df -h {out_path.parent}`) or set out_path to another disk (move "
                         "the .jsonl and its run folder along), then re-run to resume", out_path)


def sample_rows(out_path: str | Path, n: int = 3) -> list[tuple[str, str]]:
    """(prompt, completion) of up to n generated rows of the output, for the demo's closing lines."""
    found = []
    for _, row in read_rows(Path(out_path)):
        if row.get("finish_reason") != "skipped" and isinstance(row.get("completion"), str):
            found.append((str(row.get("prompt", "")), row["completion"]))
        if len(found) >= n:
            break
    return found
