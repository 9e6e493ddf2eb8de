"""One rank of a score run (`python -m llamakit.score.worker PLAN.json`, started by torchrun): models in, rows out."""

from __future__ import annotations

import fcntl
import json
import logging
import os
import sys
import time
from pathlib import Path

from llamakit.distributed import finish_and_exit
from llamakit.run.worker import _setup_logging, report_error
from llamakit.score.launch import ScorePlan

log = logging.getLogger("llamakit.worker")


def run_rank(plan: ScorePlan, local_rank: int) -> int:
    """Init the process groups, load both models' shards, score this replica's texts and append their rows."""
    import torch
    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as mpu

    from llamakit.distributed import init_model_parallel
    from llamakit.run.output import RowWriter
    from llamakit.score.rows import score_row
    from llamakit.score.scorer import Scorer, load_model
    from llamakit.score.texts import Text, Tokenized, windows

    if plan.device == "cuda":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(plan.backend)
    init_model_parallel(plan.mp)
    mp_rank, dp_rank, dp = mpu.get_model_parallel_rank(), mpu.get_data_parallel_rank(), \
        mpu.get_data_parallel_world_size()
    log.info("model-parallel rank %d of %d, data-parallel replica %d of %d, %s %s", mp_rank, plan.mp, dp_rank, dp,
             plan.device, plan.dtype)
    writer_lock = None
    if mp_rank == 0:  # tells a later launcher that this output is still being written
        writer_lock = os.open(Path(plan.run_dir) / "writers.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(writer_lock, fcntl.LOCK_SH)
    t0 = time.monotonic()
    e = plan.engine
    model = load_model(plan.ckpt_dir, e["max_seq_len"], plan.dtype, plan.device, e["quantize"])
    reference = (load_model(plan.reference_ckpt_dir, e["max_seq_len"], plan.dtype, plan.device, e["quantize"])
                 if plan.reference_ckpt_dir else None)
    log.info("model%s ready in %.1f s", "s" if reference else "", time.monotonic() - t0)
    if mp_rank == 0:  # the launcher's rate counts from the first replica ready (run's `ready.dp<R>` mark)
        (Path(plan.run_dir) / f"ready.dp{dp_rank}").touch()
    # Replica dp_rank takes every dp-th text; all ranks of a model-parallel group read the same list.
    work = {}
    wins = []
    with open(plan.work_path, encoding="utf-8") as f:
        for i, raw in enumerate(f):
            if i % dp != dp_rank or not raw.strip():
                continue
            w = json.loads(raw)
            item = Tokenized(Text(w["key"], 0, w["id"], ""), w["tokens"], w["n_context"])
            parts = windows(item, e["max_seq_len"], plan.stride)
            work[w["key"]] = (w, len(parts), {})
            wins += parts
    log.info("%d texts (%d forward windows) for this replica", len(work), len(wins))
    scorer = Scorer(model, reference, max_batch_size=e["max_batch_size"],
                    max_batch_tokens=e["max_batch_size"] * min(e["max_seq_len"], 512))
    writer = RowWriter(Path(plan.out_path)) if mp_rank == 0 else None
    n = 0
    try:
        for win, scores in scorer.score(wins):
            w, n_parts, done = work[win.key]
            done[win.part] = scores
            if len(done) < n_parts:
                continue
            n += 1
            del work[win.key]
            if writer is not None:
                writer.write(score_row(w["id"], w["extra"], w["tokens"][w["n_context"]:],
                                       [done[i] for i in range(n_parts)], plan.per_token, reference is not None))
    finally:
        if writer is not None:
            writer.close()
    if work:
        raise RuntimeError(f"{len(work)} texts were not scored completely")
    log.info("done: %d rows in %.1f s", n, time.monotonic() - t0)
    if writer_lock is not None:
        os.close(writer_lock)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m llamakit.score.worker PLAN.json (started by `llamakit score`)\n")
        return 2
    if argv is None:  # a real worker process: it ends when torchrun ends (llamakit.lifeline)
        from llamakit.lifeline import die_with_parent

        die_with_parent()
    plan = ScorePlan.load(args[0])
    rank = int(os.environ.get("RANK", "0"))
    _setup_logging(rank)
    try:
        code = run_rank(plan, int(os.environ.get("LOCAL_RANK", "0")))
    except BaseException as e:  # noqa: BLE001 - every failure must reach the launcher as one line
        report_error(plan, rank, e)  # type: ignore[arg-type]  # reads log_path, run_dir, engine like run's Plan
        code = 1
    if argv is None:
        finish_and_exit(code, plan.device)
    return code


if __name__ == "__main__":
    sys.exit(main())
