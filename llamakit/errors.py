"""The project's one problem type: what is wrong, the fix, and where (file[:line]). `Problem` is the record that a
report lists (inspect collects many, with a level and a stable code); `LlamakitError` raises one, and the CLI
prints it as one line."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _one_line(what: str, fix: str, where: str | None, line: int | None) -> str:
    """`file:line: what. Fix: fix` (parts that are unknown are left out)."""
    place = ""
    if where:
        place = f"{where}:{line}: " if line is not None else f"{where}: "
    text = f"{place}{what}"
    if fix:
        text += f". Fix: {fix}"
    return text


@dataclass
class Problem:
    """A problem the user can fix; `level` (error | warning) and `code` matter where a report lists several."""

    what: str
    fix: str = ""
    where: str | None = None
    line: int | None = None
    level: str = "error"
    code: str = ""

    def one_line(self) -> str:
        return _one_line(self.what, self.fix, self.where, self.line)

    def error(self) -> "LlamakitError":
        """This problem, to raise (where the first one stops the command)."""
        return LlamakitError(self.what, self.fix, self.where, self.line)


class LlamakitError(Exception):
    """A Problem raised: carries the place (file[:line]), the finding and the fix."""

    def __init__(self, what: str, fix: str = "", where: str | Path | None = None, line: int | None = None):
        self.what = what
        self.fix = fix
        self.where = str(where) if where is not None else None
        self.line = line
        super().__init__(self.one_line())

    def one_line(self) -> str:
        """Render as `file:line: what. Fix: fix` (parts that are unknown are left out)."""
        return _one_line(self.what, self.fix, self.where, self.line)

    def problem(self, code: str = "", level: str = "error") -> Problem:
        """The same problem as a report entry."""
        return Problem(self.what, self.fix, self.where, self.line, level, code)


def raise_first(problems: list[Problem]) -> None:
    """Raise the first error-level problem of a list (a command that stops where a report would go on)."""
    for p in problems:
        if p.level == "error":
            raise p.error()
