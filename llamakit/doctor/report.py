"""Renders a DoctorReport: a rich table with marks in a terminal, plain lines when piped, JSON, or a help-request file."""

from __future__ import annotations

import datetime as _dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from llamakit.doctor.checks import CHECKS, DoctorReport

MARKS = {"ok": "✓", "warn": "!", "fail": "✗", "skip": "-"}
PLAIN = {"ok": "[ok]  ", "warn": "[warn]", "fail": "[FAIL]", "skip": "[skip]"}
STYLES = {"ok": "green", "warn": "yellow", "fail": "bold red", "skip": "dim"}


def summary_line(rep: DoctorReport) -> str:
    c = rep.counts
    verdict = "problems found" if rep.exit_code else "no problems found"
    return (f"doctor: {verdict} ({c['ok']} ok, {c['warn']} warning(s), {c['fail']} failed, {c['skip']} skipped; "
            f"{rep.seconds:.1f} s)")


def to_plain(rep: DoctorReport) -> str:
    """Plain text, one check per line and its fix indented under it (for pipes, logs and the report file)."""
    width = max(len(r.name) for r in rep.results) if rep.results else 0
    lines = []
    for r in rep.results:
        lines.append(f"{PLAIN[r.status]} {r.name.ljust(width)}  {r.finding}")
        if r.fix and r.status in ("warn", "fail"):
            lines.append(f"{' ' * (7 + width)}   fix: {r.fix}")
    lines.append(summary_line(rep))
    return "\n".join(lines) + "\n"


def to_rich(rep: DoctorReport) -> Any:
    """A rich renderable: marks and colours, the fix under each finding."""
    from rich.table import Table
    from rich.text import Text

    t = Table(show_header=True, header_style="bold", box=None, pad_edge=False)
    t.add_column("", no_wrap=True)
    t.add_column("check", no_wrap=True)
    t.add_column("finding / fix")
    for r in rep.results:
        body = Text(r.finding)
        if r.fix and r.status in ("warn", "fail"):
            body.append("\nfix: ", style="bold")
            body.append(r.fix, style="cyan")
        t.add_row(Text(MARKS[r.status], style=STYLES[r.status]), Text(r.name, style=STYLES[r.status]), body)
    return t


def to_json(rep: DoctorReport) -> dict[str, Any]:
    """The machine-readable report (field names documented in docs/doctor.md)."""
    from llamakit import __version__

    return {
        "llamakit": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "exit_code": rep.exit_code,
        "strict": rep.strict,
        "seconds": round(rep.seconds, 3),
        "summary": rep.counts,
        "checks": [r.to_dict() for r in rep.results],
        "facts": rep.facts.to_dict(),
    }


def collect_env(timeout: float = 120.0) -> str:
    """torch's own `python -m torch.utils.collect_env`, in a child process so a broken CUDA cannot take us down."""
    try:
        p = subprocess.run([sys.executable, "-m", "torch.utils.collect_env"], capture_output=True, text=True,
                           timeout=timeout)
        return (p.stdout + (("\n" + p.stderr) if p.returncode else "")).strip()
    except subprocess.TimeoutExpired:
        return f"(collect_env gave no answer within {timeout:.0f} s)"
    except OSError as e:
        return f"(collect_env could not run: {e})"


def write_report_file(rep: DoctorReport, path: str | Path, env_text: str | None = None) -> Path:
    """One file to attach to a help request: the verdicts, every fact as JSON, and torch's collect_env output."""
    path = Path(path)
    env_text = collect_env() if env_text is None else env_text
    descr = "\n".join(f"  {c.name:16} {c.about}" for c in CHECKS)
    text = (f"# llamakit doctor report, {_dt.datetime.now().isoformat(timespec='seconds')}\n"
            f"# command: {' '.join(sys.argv)}\n\n## Checks\n{to_plain(rep)}\n## What each check looks at\n{descr}\n\n"
            f"## Facts (JSON)\n{json.dumps(to_json(rep), indent=2, default=str)}\n\n"
            f"## python -m torch.utils.collect_env\n{env_text}\n")
    path.write_text(text, encoding="utf-8")
    return path


def list_text() -> str:
    """`doctor --list`: every check's name and what it looks at; active ones marked."""
    return "\n".join(f"{c.name:16} {c.about}{'  [active; skipped by --fast]' if c.active else ''}"
                     for c in CHECKS) + "\n"
