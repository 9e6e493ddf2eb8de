"""checklist.chk as Meta ships it (`md5  filename` per file): the md5 of a file, writing the list and reading it
back. The one home for both; reshard, make-tiny, the synthetic checkpoints and inspect --verify use it."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Callable

CHECKLIST = "checklist.chk"
# `md5  name`, also `md5 *name` (binary mode of md5sum) and `./name`
LINE = re.compile(r"^([0-9a-fA-F]{32})\s+\*?(?:\./)?(.+?)\s*$")


def md5_file(path: Path, on_bytes: Callable[[int], None] | None = None, chunk: int = 8 << 20) -> str:
    """md5 of a file read in chunks, reporting each chunk's size (for a progress bar)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
            if on_bytes:
                on_bytes(len(block))
    return h.hexdigest()


def write_checklist(ckpt_dir: Path, names: list[str] | None = None,
                    on_bytes: Callable[[int], None] | None = None) -> Path:
    """Write checklist.chk for `names` (default: every shard, then params.json) and return its path."""
    ckpt_dir = Path(ckpt_dir)
    if names is None:
        names = sorted(p.name for p in ckpt_dir.glob("consolidated.*.pth")) + ["params.json"]
    lines = [f"{md5_file(ckpt_dir / n, on_bytes)}  {n}" for n in names]
    out = ckpt_dir / CHECKLIST
    out.write_text("\n".join(lines) + "\n")
    return out


def read_checklist(path: Path) -> tuple[dict[str, str], list[int]]:
    """{file name: md5} in the file's order, and the numbers of lines that are not `md5  filename`."""
    expected: dict[str, str] = {}
    malformed: list[int] = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        m = LINE.match(line)
        if not m:
            malformed.append(lineno)
            continue
        expected[m.group(2)] = m.group(1).lower()
    return expected, malformed
