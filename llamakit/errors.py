"""The project's one error type: what is wrong, where, and how to fix it; the CLI prints it as one line."""

from __future__ import annotations

from pathlib import Path


class LlamakitError(Exception):
    """A problem the user can fix; carries the place (file[:line]), the finding and the fix."""

    def __init__(self, what: str, fix: str = "", where: str | Path | None = None, line: int | None = None):
        self.what = what
        self.fix = fix
        self.where = str(where) if where is not None else None
        self.line = line
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Render as `file:line: what. Fix: fix` (parts that are unknown are left out)."""
        place = ""
        if self.where:
            place = f"{self.where}:{self.line}: " if self.line is not None else f"{self.where}: "
        text = f"{place}{self.what}"
        if self.fix:
            text += f". Fix: {self.fix}"
        return text
