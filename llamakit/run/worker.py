"""One rank of a run (`python -m llamakit.run.worker PLAN.json`, started by torchrun): engine in, rows out."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from llamakit.distributed import finish_and_exit
from llamakit.errors import LlamakitError
from llamakit.lifeline import die_with_parent
from llamakit.run.output import disk_full_error
from llamakit.run.plan import Plan

log = logging.getLogger("llamakit.worker")


def _setup_logging(rank: int) -> None:
    """Worker messages go to stderr, which the launcher sends to the run's log file."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"%(asctime)s rank {rank}    %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def completion_text(tok: Any, prompt_tokens: list[int], tokens: list[int]) -> str:
    """The generated text such that prompt + completion reads as the model's text (keeps the leading space)."""
    head = tok.decode(prompt_tokens, cut_at_stop=False)  # a chat prompt holds the stop ids of earlier turns
    full = tok.decode(prompt_tokens + tokens, cut_at_stop=False)
    return full[len(head):] if full.startswith(head) else tok.decode(tokens)


def run_rank(plan: Plan, local_rank: int) -> int:
    """Init the process groups, build the engine, generate this replica's share and append its rows."""
    import torch
    import torch.distributed as dist
    from fairscale.nn.model_parallel import initialize as mpu

    from llamakit.checkpoint.shards import open_checkpoint
    from llamakit.engine.api import EngineConfig
    from llamakit.run.decoding import decoding_fields, work_request
    from llamakit.distributed import init_model_parallel
    from llamakit.engine.engine import build_engine
    from llamakit.run.nodes import Nodes
    from llamakit.run.output import RowWriter, output_row
    from llamakit.run.parts import PartWriter, part_path
    from llamakit.run.prompts import iter_work
    from llamakit.tokenizer import Tokenizer

    if plan.device == "cuda":
        torch.cuda.set_device(local_rank)
    nodes = Nodes.from_dict(plan.nodes)
    try:
        dist.init_process_group(plan.backend)
        init_model_parallel(plan.mp)  # fairscale's, without its stdout lines
    except Exception as e:
        if not nodes.multi:
            raise
        from llamakit.run.nodewatch import connect_error

        raise connect_error(e, plan) from e
    mp_rank, dp_rank, dp = mpu.get_model_parallel_rank(), mpu.get_data_parallel_rank(), \
        mpu.get_data_parallel_world_size()
    log.info("model-parallel rank %d of %d, data-parallel replica %d of %d, %s %s", mp_rank, plan.mp, dp_rank, dp,
             plan.device, plan.dtype)
    watch = None
    if nodes.multi:  # all nodes agree on the plan; a lost node stops this one within a heartbeat
        from llamakit.run.nodewatch import NodeWatch

        watch = NodeWatch()
        watch.check_same_plan(plan)
        watch.start(lambda err: _lost_node(plan, err))
    writer_lock = None
    if mp_rank == 0 and not nodes.multi:  # tells a later launcher on this host that the output is being written
        writer_lock = os.open(Path(plan.run_dir) / "writers.lock", os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(writer_lock, fcntl.LOCK_SH)
    torch.manual_seed(plan.engine["seed"])
    t0 = time.monotonic()
    ckpt = open_checkpoint(plan.ckpt_dir)
    tok = Tokenizer(plan.tokenizer_path)
    engine = build_engine(ckpt, EngineConfig(**{**plan.engine, "graph_modes": tuple(plan.engine.get(
        "graph_modes", ("greedy", "sample", "full")))}), mp_rank, tok)
    log.info("engine ready in %.1f s", time.monotonic() - t0)
    if mp_rank == 0:  # generation begins: the launcher's tok/s counts from the first of these marks
        try:
            (Path(plan.run_dir) / f"ready.dp{dp_rank}").touch()
        except OSError:
            pass
    # Replica dp_rank takes every dp-th prompt of the work list; all ranks of a model-parallel group read the
    # same list, so they feed the engine the same requests in the same order.
    mine = [w for i, w in enumerate(iter_work(Path(plan.work_path))) if i % dp == dp_rank]
    interned: dict = {}
    requests = [work_request(w, plan.max_gen_len, interned) for w in mine if not w.get("skipped")]
    log.info("%d prompts for this replica", len(requests))
    writer: RowWriter | PartWriter | None = None
    if mp_rank == 0:  # over several nodes (or a share) each replica appends to its own part file: no shared lock
        writer = PartWriter(part_path(plan.out_path, dp_rank, nodes.share)) if nodes.parts else \
            RowWriter(Path(plan.out_path))
        for w in mine:  # prompts on_long_prompt skips: a row without generation (parts mode only lists them)
            if w.get("skipped"):
                recorded = {"params": w["recorded"]} if w.get("recorded") else {}
                writer.write(output_row(w["id"], w["prompt"], w["extra"], "", w["n_tokens"], 0, "skipped",
                                        decoding={"sample": w.get("sample", 0), **recorded}))
    n, gen_tokens, t_gen = 0, 0, time.monotonic()
    try:
        for c in engine.generate(requests):
            n += 1
            gen_tokens += len(c.tokens)
            if writer is not None:
                w = c.request.payload
                text = c.text if c.text is not None else completion_text(tok, c.request.prompt_tokens, c.tokens)
                writer.write(output_row(w["id"], w["prompt"], w["extra"], text, len(c.request.prompt_tokens),
                                        len(c.tokens), c.finish_reason, bool(w.get("truncated")),
                                        decoding_fields(c, c.request.sample, w.get("recorded") or {})))
    finally:
        if writer is not None:
            writer.close()
    if n != len(requests):
        raise RuntimeError(f"the engine returned {n} completions for {len(requests)} requests")
    gen_s = time.monotonic() - t_gen
    log.info("done: %d rows in %.1f s (%d tokens in %.1f s generating, %.1f tok/s)", n, time.monotonic() - t0,
             gen_tokens, gen_s, gen_tokens / gen_s if gen_s > 0 else 0.0)
    if mp_rank == 0:  # for the summary's "while generating" rate (the launcher sums replicas)
        stats = Path(plan.run_dir) / f"generation.replica{dp_rank}.json"
        stats.write_text(json.dumps({"tokens": gen_tokens, "seconds": gen_s}), encoding="utf-8")
    if writer_lock is not None:
        os.close(writer_lock)
    if watch is not None:
        watch.finish()  # every replica on every node has closed its part file
        if dist.get_rank() == 0:
            from llamakit.run.nodewatch import merge_at_end

            merge_at_end(plan)
        watch.barrier()  # no node's launcher reads the output before the merge is done
    return 0


def _lost_node(plan: Plan, err: LlamakitError) -> None:
    """The heartbeat broke: report the one clear line and leave now (the main thread may wait in a collective
    that would never return)."""
    report_error(plan, int(os.environ.get("RANK", "0")), err)
    logging.shutdown()
    os._exit(1)


def report_error(plan: Plan, rank: int, exc: BaseException) -> None:
    """Write this rank's one-line error for the launcher; the full traceback goes to the log (stderr)."""
    entry: dict[str, Any] = {"rank": rank, "time": time.time()}
    if isinstance(exc, KeyboardInterrupt):  # Ctrl-C, or torchrun passing on a stop: not a bug, no traceback
        what = "stopped by SIGINT (Ctrl-C, or torchrun stopping its workers); the rows written so far are kept"
        entry.update(what=what, fix="re-run the same command to resume", where=None, line=None, message=what)
        log.warning("%s", what)
    else:
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            exc = disk_full_error(Path(plan.out_path))
        if not isinstance(exc, LlamakitError) and plan.nodes.get("nnodes", 1) > 1:
            from llamakit.run.nodewatch import is_lost_peer, lost_node_error

            if is_lost_peer(exc):  # a model-parallel all-reduce with a rank on the node that went away
                log.error("collective failed: %s", exc)
                exc = lost_node_error(exc)
        if isinstance(exc, LlamakitError):
            entry.update(what=exc.what, fix=exc.fix, where=exc.where, line=exc.line, message=exc.one_line())
        else:
            first = (str(exc).strip().splitlines() or [""])[0][:300]
            fix = f"see the traceback in the log ({plan.log_path})"
            if "out of memory" in str(exc).lower():
                half = max(1, int(plan.engine.get("max_batch_size", 2)) // 2)
                fix = (f"the GPU ran out of memory: re-run with --set max_batch_size={half} (or a lower "
                       f"max_seq_len, or quantize: int8), and check `nvidia-smi` for other jobs; the re-run resumes")
            entry.update(what=f"{type(exc).__name__}: {first}" if first else type(exc).__name__,
                         fix=fix, where=None, line=None,
                         message=f"{type(exc).__name__}: {first}")
        log.error("failed: %s\n%s", entry["message"], "".join(traceback.format_exception(exc)))
    _write_error(Path(plan.run_dir) / f"error.rank{rank}.json", entry)


ERROR_RESERVE = 4096  # bytes set aside at start for the error file: a full disk must not swallow the message


def reserve_error_file(plan: Plan, rank: int) -> None:
    """Allocate this rank's error file now (blanks, which the launcher skips), while the disk has room."""
    path = Path(plan.run_dir) / f"error.rank{rank}.json"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, b" " * ERROR_RESERVE)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def _write_error(path: Path, entry: dict[str, Any]) -> None:
    """Into the reserved blanks when they are there (no new disk space needed), else a new file (atomically)."""
    for key in ("what", "fix", "message"):
        if isinstance(entry.get(key), str):
            entry[key] = entry[key][:1000]
    data = json.dumps(entry, ensure_ascii=False).encode("utf-8")
    if path.is_file() and path.stat().st_size >= len(data):
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, data.ljust(path.stat().st_size), 0)
        finally:
            os.close(fd)
        return
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        sys.stderr.write("usage: python -m llamakit.run.worker PLAN.json (started by `llamakit run`)\n")
        return 2
    if argv is None:  # a real worker process: it ends when torchrun ends, however torchrun ends
        die_with_parent(signal.SIGKILL)
    plan = Plan.load(args[0])
    rank = int(os.environ.get("RANK", "0"))
    _setup_logging(rank)
    reserve_error_file(plan, rank)
    try:
        code = run_rank(plan, int(os.environ.get("LOCAL_RANK", "0")))
    except BaseException as e:  # noqa: BLE001 - every failure must reach the launcher as one line
        report_error(plan, rank, e)
        code = 1
    if argv is None:  # a real worker process (tests call main() in-process with argv)
        finish_and_exit(code, plan.device)
    return code


if __name__ == "__main__":
    sys.exit(main())
