"""The one function both front ends call (`llamakit doctor` via typer, `python -m llamakit.doctor` via argparse)."""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from llamakit.doctor.checks import run_doctor
from llamakit.doctor.report import list_text, summary_line, to_json, to_plain, to_rich, write_report_file


def execute(console: Console, check: str | None = None, ckpt_dir: Path | None = None, recipe: Path | None = None,
            as_json: bool = False, report: Path | None = None, strict: bool = False, fast: bool = False,
            list_checks: bool = False, timeout: float = 120.0, master_addr: str | None = None,
            master_port: int | None = None) -> int:
    """Run doctor with these options, show the result on `console` and return the exit code."""
    if list_checks:
        console.print(list_text(), end="", markup=False, soft_wrap=True)
        return 0
    rep = run_doctor(only=check, ckpt_dir=ckpt_dir, recipe=recipe, fast=fast, strict=strict, timeout=timeout,
                     master_addr=master_addr, master_port=master_port)
    if report is not None:
        write_report_file(rep, report)
    if as_json:
        console.print(json.dumps(to_json(rep), indent=2, default=str), markup=False, soft_wrap=True,
                      highlight=False)
    elif console.is_terminal:
        console.print(to_rich(rep))
        console.print(summary_line(rep), style="bold red" if rep.exit_code else "bold green")
    else:
        console.print(to_plain(rep), end="", markup=False, soft_wrap=True, highlight=False)
    if report is not None and not as_json:
        console.print(f"report written to {report} (attach it to your help request)", markup=False)
    return rep.exit_code
