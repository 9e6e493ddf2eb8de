"""Process-group set-up shared by run, bench and tests: torch.distributed + fairscale model parallel, quietly."""

from __future__ import annotations

import contextlib
import io


def init_model_parallel(mp: int) -> None:
    """fairscale's initialize_model_parallel, without its three "> initializing ..." lines on stdout
    (they would corrupt `--json` output and the progress display)."""
    from fairscale.nn.model_parallel.initialize import initialize_model_parallel, model_parallel_is_initialized

    if model_parallel_is_initialized():
        return
    with contextlib.redirect_stdout(io.StringIO()):
        initialize_model_parallel(mp)
