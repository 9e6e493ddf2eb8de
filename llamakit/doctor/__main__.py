"""`python -m llamakit.doctor`: doctor without the rest of the CLI (works even when other commands cannot import)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m llamakit.doctor", description="Can this server run that checkpoint?")
    p.add_argument("check", nargs="?", help="run only this check (see --list)")
    p.add_argument("--ckpt-dir", type=Path)
    p.add_argument("--recipe", type=Path)
    p.add_argument("--json", action="store_true")
    p.add_argument("--report", type=Path)
    p.add_argument("--strict", action="store_true")
    p.add_argument("--fast", action="store_true")
    p.add_argument("--list", action="store_true")
    p.add_argument("--master-addr")
    p.add_argument("--master-port", type=int, default=29500)
    a = p.parse_args(argv)
    from llamakit.doctor.cli import execute
    from llamakit.errors import LlamakitError
    try:
        return execute(Console(highlight=False), a.check, a.ckpt_dir, a.recipe, a.json, a.report, a.strict, a.fast,
                       a.list, master_addr=a.master_addr, master_port=a.master_port)
    except LlamakitError as e:
        Console(stderr=True, highlight=False).print(f"error: {e.one_line()}", markup=False, soft_wrap=True)
        return 2


if __name__ == "__main__":
    sys.exit(main())
