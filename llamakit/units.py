"""Byte sizes as people read them, one formatter for every command (no torch import: used by `--help` paths)."""

from __future__ import annotations

MiB = 1024**2
GiB = 1024**3


def human_bytes(n: int | float) -> str:
    """1.8 MiB, 12.6 GiB, 512 B: GiB from 1 GiB up, MiB from 1 MiB up, plain bytes below."""
    if n >= GiB:
        return f"{n / GiB:.1f} GiB"
    if n >= MiB:
        return f"{n / MiB:.1f} MiB"
    return f"{int(n):,} B"


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 process', '2 processes', '1 thread', '0 threads'."""
    if n == 1:
        return f"1 {word}"
    return f"{n} {many or (word + 'es' if word.endswith(('s', 'sh', 'ch', 'x')) else word + 's')}"
