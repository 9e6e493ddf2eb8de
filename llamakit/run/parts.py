"""Part files: each data-parallel replica appends to its own file next to out_path (no lock shared between hosts,
so it is safe on NFS); resume reads them all; one process merges them into out_path in input order, atomically."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from llamakit.errors import LlamakitError
from llamakit.run.decoding import row_key
from llamakit.run.output import RowWriter, encode_row, id_key, read_rows, repair_tail

# `OUT.part-r003` (replica 3 of a multi-node run) or `OUT.part-s02of08-r001` (replica 1 of share 2 of 8, the
# independent SLURM-array mode). One writer per file at any time: the name carries the writer's identity.
PART_RE = re.compile(r"\.part-(?:s(\d+)of(\d+)-)?r(\d+)$")


def part_tag(dp_rank: int, share: tuple[int, int] | None = None) -> str:
    """The writer identity in a part file's name: the replica, and the share in array mode."""
    head = f"s{share[0]:02d}of{share[1]:02d}-" if share else ""
    return f"{head}r{dp_rank:03d}"


def part_path(out_path: str | Path, dp_rank: int, share: tuple[int, int] | None = None) -> Path:
    """The part file replica `dp_rank` appends to, next to out_path."""
    out = Path(out_path)
    return out.with_name(f"{out.name}.part-{part_tag(dp_rank, share)}")


def part_files(out_path: str | Path) -> list[Path]:
    """Every part file of out_path, in name order (temp files and other names are not parts)."""
    out = Path(out_path)
    if not out.parent.is_dir():
        return []
    found = [p for p in out.parent.glob(f"{glob_escape(out.name)}.part-*") if PART_RE.search(p.name) and p.is_file()]
    return sorted(found)


def glob_escape(name: str) -> str:
    """A file name as a literal glob pattern ([ and * in user file names)."""
    return re.sub(r"([\[\]*?])", r"[\1]", name)


def output_files(out_path: str | Path) -> list[Path]:
    """out_path (rows merged or written by a single-node run) followed by its part files: what resume reads."""
    out = Path(out_path)
    return ([out] if out.is_file() else []) + part_files(out)


class PartWriter(RowWriter):
    """Append-only writer of one replica's part file. It is the file's only writer, so no lock is taken; a torn
    last line left by a killed earlier writer of the same part is cut before the first append."""

    def __init__(self, path: Path, every: int = 64, seconds: float = 2.0):
        self.cut = repair_tail(Path(path))
        super().__init__(path, every, seconds, lock=False)


def iter_output_rows(out_path: str | Path) -> Iterable[tuple[Path, int, dict[str, Any]]]:
    """(file, line, row) of every complete row in out_path and its parts (torn last lines are ignored)."""
    for path in output_files(out_path):
        for line, row in read_rows(path):
            yield path, line, row


@dataclass
class PartsReport:
    """What out_path and its parts hold together, for `llamakit merge --check` and the end of a run."""

    files: dict[str, int] = field(default_factory=dict)  # file -> complete rows
    rows: int = 0  # distinct (id, sample) rows
    duplicates: int = 0  # rows whose (id, sample) was already seen (dropped by the merge)
    missing: list[str] = field(default_factory=list)  # ids of the prompt file without a row
    unknown: list[str] = field(default_factory=list)  # ids with a row that the prompt file does not have

    def lines(self) -> list[str]:
        out = [f"{Path(f).name}: {n} rows" for f, n in self.files.items()]
        out.append(f"{self.rows} distinct rows, {self.duplicates} duplicate rows (kept once), "
                   f"{len(self.missing)} prompts without a row")
        if self.missing:
            out.append("first missing: " + ", ".join(self.missing[:5]))
        return out


def check_parts(out_path: str | Path, order: list[Any]) -> PartsReport:
    """Count rows per file, duplicates and the prompt ids (in `order`) that have no row yet; writes nothing."""
    rep = PartsReport()
    seen: set[str] = set()
    seen_rows: set[str] = set()
    for path in output_files(out_path):
        rows = read_rows(path)
        rep.files[str(path)] = len(rows)
        for _, row in rows:
            rk = row_key(row["id"], row.get("sample", 0))  # n samples of a prompt are n rows
            if rk in seen_rows:
                rep.duplicates += 1
            seen_rows.add(rk)
            seen.add(id_key(row["id"]))
    rep.rows = len(seen_rows)
    wanted = [id_key(i) for i in order]
    rep.missing = [k for k in wanted if k not in seen]
    rep.unknown = sorted(seen - set(wanted))
    return rep


def merge_parts(out_path: str | Path, order: list[Any], require_complete: bool = True) -> int:
    """Merge out_path and its parts into out_path: input order (`order`: the prompt ids), each id once (its first
    row wins), written to a temp file, fsynced and renamed over out_path; then the parts are removed. A kill
    before the rename leaves everything as it was; after it, the parts left only repeat rows of out_path, which
    the next merge or resume drops. Returns the rows written."""
    out = Path(out_path)
    parts = part_files(out)
    pos = {id_key(i): n for n, i in enumerate(order)}
    best: dict[str, dict[str, Any]] = {}  # by (id, sample): a prompt's n samples are n rows
    for path, line, row in iter_output_rows(out):
        k = id_key(row["id"])
        if k not in pos:
            raise LlamakitError(f"row for id {row['id']!r} is not in the prompt file", "it was written from other "
                                "prompts: move that file away, or merge with the prompt file it came from", path, line)
        best.setdefault(row_key(row["id"], row.get("sample", 0)), row)
    have = {id_key(r["id"]) for r in best.values()}
    if require_complete and len(have) < len(pos):
        missing = [i for i in order if id_key(i) not in have]
        raise LlamakitError(f"{len(missing)} of {len(pos)} prompts have no row yet (first: id {missing[0]!r})",
                            "finish the run first (re-run or re-submit it: it resumes), or merge anyway with "
                            "--partial", out)
    tmp = out.with_name(f".{out.name}.sorting")
    try:
        with open(tmp, "wb") as f:
            for k in sorted(best, key=lambda k: (pos[id_key(best[k]["id"])], _sample(best[k]))):
                f.write(encode_row(best[k]))
            f.flush()
            os.fsync(f.fileno())
    except OSError:  # e.g. a full disk: the unordered rows stay complete, the partial copy goes
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    _fsync_dir(out.parent)
    for p in parts:
        p.unlink(missing_ok=True)
    _fsync_dir(out.parent)
    return len(best)


def _sample(row: dict[str, Any]) -> int:
    s = row.get("sample", 0)
    return s if isinstance(s, int) else 0


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def done_keys(out_path: str | Path) -> set[str]:
    """Id keys with a row in out_path or any part: what a resume on any node skips."""
    return {id_key(row["id"]) for _, _, row in iter_output_rows(out_path)}

