"""`llamakit inspect`: what a checkpoint folder holds, every problem in it, and whether it fits this machine.

folder.py runs the steps (inspect_checkpoint), report.py is the report and its JSON, advice.py puts
llamakit.fit's verdict into inspect's words."""

from llamakit.inspection.advice import fit_summary, memory_info
from llamakit.inspection.folder import (DEFAULT_BATCH, DEFAULT_DTYPE, DEFAULT_SEQ, inspect_checkpoint,
                                        recipe_settings)
from llamakit.inspection.report import SCHEMA, Finding, InspectReport
from llamakit.fit import fit_options

__all__ = ["DEFAULT_BATCH", "DEFAULT_DTYPE", "DEFAULT_SEQ", "SCHEMA", "Finding", "InspectReport", "fit_options",
           "fit_summary", "inspect_checkpoint", "memory_info", "recipe_settings"]
