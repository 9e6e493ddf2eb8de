"""`llamakit merge OUT`: after independent shares (a SLURM array) or a run stopped for good, bring OUT's part files
into OUT in input order; the prompt file is the one the run recorded in its plan, unless given."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llamakit.errors import LlamakitError
from llamakit.run.parts import PartsReport, check_parts, merge_parts, part_files
from llamakit.run.prompts import read_prompts


@dataclass
class PromptSource:
    """The prompt file a run recorded for OUT (its plan.json), which fixes the input order."""

    path: Path
    prompt_field: str = "prompt"
    id_field: str = "id"
    chat_format: str = "none"  # with a chat format, prompts may be message lists


def run_dir_of(out_path: Path) -> Path:
    """The run folder next to out_path (the same rule as the recipe's RunPaths)."""
    return out_path.parent / f".{out_path.name}.llamakit"


def recorded_prompts(out_path: Path) -> PromptSource:
    """The prompt file of the run(s) that wrote OUT: from plan.json in its run folder or a share's folder."""
    run_dir = run_dir_of(out_path)
    plans = [run_dir / "plan.json", *sorted(run_dir.glob("share-*/plan.json"))]
    for p in plans:
        try:
            plan = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            continue
        return PromptSource(Path(plan["prompt_path"]), plan.get("prompt_field", "prompt"), plan.get("id_field", "id"),
                            plan.get("chat_format", "none"))
    raise LlamakitError(f"no run of llamakit recorded its prompt file for this output (no plan.json in {run_dir})",
                        "name the prompt file: llamakit merge OUT --prompts PROMPTS.jsonl", out_path)


def merge_output(out_path: str | Path, prompts: str | Path | None = None, prompt_field: str | None = None,
                 id_field: str | None = None, partial: bool = False, check_only: bool = False) -> PartsReport:
    """Check OUT and its parts against the prompt file; unless check_only, merge them (all prompts must have a
    row unless partial). Returns what was found (before the merge)."""
    out = Path(out_path).expanduser().resolve()
    src = recorded_prompts(out) if prompts is None else PromptSource(Path(prompts).expanduser().resolve())
    if prompt_field:
        src.prompt_field = prompt_field
    if id_field:
        src.id_field = id_field
    if not out.is_file() and not part_files(out):
        raise LlamakitError("neither this output nor any part file of it (OUT.part-*) exists",
                            "check the path: it is the recipe's out_path", out)
    order = [p.id for p in read_prompts(src.path, src.prompt_field, src.id_field, src.chat_format)]
    report = check_parts(out, order)
    if report.unknown:
        raise LlamakitError(f"{len(report.unknown)} rows have ids that are not in {src.path} (first: "
                            f"{report.unknown[0]})", "merge with the prompt file the run used (--prompts)", out)
    if not check_only:
        merge_parts(out, order, require_complete=not partial)
    return report
