"""`llamakit run` end to end: validate everything, plan, spawn torchrun, follow progress, collect errors, finish."""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from llamakit.checkpoint.shards import Checkpoint, open_checkpoint
from llamakit.engine.api import EngineConfig
from llamakit.errors import LlamakitError
from llamakit.run.plan import (Devices, Plan, choose_devices, cuda_facts, describe, describe_gpu, free_port,
                               memory_line, omp_threads, torchrun_argv, worker_env)
from llamakit.run.prompts import (Prepared, Prompt, RowWriter, id_key, output_row, prepare, read_prompts,
                                  repair_tail, scan_output, finalize_output)
from llamakit.run.recipe import LoadedRecipe, RunPaths, load_recipe, resolve_paths
from llamakit.tokenizer import Tokenizer, find_tokenizer

log = logging.getLogger("llamakit.run")

ProgressFn = Callable[["Progress"], None]


@dataclass
class Progress:
    """Rows written so far by this run (all replicas), for the progress bar and the log."""

    done: int
    total: int  # rows this run has to write
    tokens: int  # generated tokens counted since the first finished row (the rate ignores model loading)
    elapsed: float  # seconds since the first finished row
    phase: str  # "loading" until the first row arrives, then "generating"
    all_tokens: int = 0  # every token this run wrote, and the seconds since launch: the rate when all rows
    since_start: float = 0.0  # arrived in one poll (tiny models), where the first-row clock measured nothing

    @property
    def tok_per_s(self) -> float:
        if self.tokens > 0 and self.elapsed > 0:
            return self.tokens / self.elapsed
        return self.all_tokens / self.since_start if self.since_start > 0 else 0.0


@dataclass
class Setup:
    """A fully validated run: nothing has been written yet."""

    loaded: LoadedRecipe
    paths: RunPaths
    ckpt: Checkpoint
    prompts: list[Prompt]
    todo: list[Prepared]  # prompts without a row yet (incl. ones on_long_prompt skips)
    plan: Plan
    argv: list[str]
    torn_bytes: int

    @property
    def plan_file(self) -> Path:
        return Path(self.plan.run_dir) / "plan.json"


@dataclass
class Summary:
    """What a run did; printed by the CLI and written to the log."""

    out_path: str
    log_path: str
    total: int
    already_done: int
    generated: int
    skipped: int
    truncated: int
    tokens: int
    seconds: float
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = f", {self.tokens / self.seconds:.1f} tok/s overall" if self.seconds > 0 and self.tokens else ""
        out = [f"{self.total} prompts: {self.generated} generated now, {self.already_done} were already in the "
               f"output (resumed), {self.skipped} skipped as too long, {self.truncated} truncated",
               f"{self.tokens} tokens generated in {self.seconds:.1f} s including start-up{rate}",
               f"output: {self.out_path}", f"log: {self.log_path}"]
        return out + self.notes


# ---------------------------------------------------------------- validation (no side effects)


def check_tokenizer(ckpt: Checkpoint, tok: Tokenizer) -> None:
    """The tokenizer's ids must index the checkpoint's embedding rows one to one."""
    if tok.n_words != ckpt.vocab_rows:
        raise LlamakitError(f"tokenizer has {tok.n_words} tokens but the checkpoint's embedding has "
                            f"{ckpt.vocab_rows} rows ({ckpt.path})",
                            "use the tokenizer.model that came with this checkpoint (set tokenizer_path)",
                            tok.path.resolve())


def plan_run(recipe: str | Path, overrides: list[str] | None = None, flags: dict[str, Any] | None = None,
             gpu_facts: tuple[list, bool] | None = None) -> Setup:
    """Validate recipe, checkpoint, tokenizer, prompts and output; decide MP x DP; write nothing."""
    lr = load_recipe(recipe, overrides, flags)
    r = lr.recipe
    paths = resolve_paths(lr)
    ckpt = open_checkpoint(paths.ckpt_dir)
    tok_path = paths.tokenizer_path or find_tokenizer(paths.ckpt_dir)
    tok = Tokenizer(tok_path)
    check_tokenizer(ckpt, tok)
    prompts = read_prompts(paths.prompt_path, r.prompt_field, r.id_field)
    state = scan_output(paths.out_path, prompts)
    pending = [p for p in prompts if id_key(p.id) not in state.done]
    hint = f" (recipe {lr.describe('max_seq_len')})"
    todo = prepare(pending, lambda texts: [[tok.bos_id] + ids for ids in tok.encode_batch(texts)],
                   r.max_prompt_len, r.on_long_prompt, paths.prompt_path, hint)
    gpus, cuda_ok = gpu_facts if gpu_facts is not None else cuda_facts()
    dev: Devices = choose_devices(r.device, r.dtype, r.nproc, ckpt.mp, gpus, cuda_ok, lr.describe("device"),
                                  paths.ckpt_dir)
    engine = EngineConfig(max_seq_len=r.max_seq_len, max_batch_size=r.max_batch_size, dtype=dev.dtype,  # type: ignore[arg-type]
                          device=dev.device, temperature=r.temperature, top_p=r.top_p, seed=r.seed,  # type: ignore[arg-type]
                          quantize=r.quantize, fast=r.fast)
    mem, warn = memory_line(ckpt.config, ckpt.vocab_rows, dev, r.quantize, r.max_batch_size, r.max_seq_len)
    notes = [warn] if warn else []
    if state.torn_bytes:
        notes.append(f"the output's last line is torn ({state.torn_bytes} bytes, a killed run): it is cut off "
                     "and that prompt generated again")
    run_dir = paths.run_dir
    plan = Plan(mp=dev.mp, dp=dev.dp, device=dev.device, dtype=dev.dtype, backend=dev.backend,
                gpus=[describe_gpu(g) for g in dev.gpus], engine=asdict(engine), max_gen_len=r.max_gen_len,
                ckpt_dir=str(paths.ckpt_dir), tokenizer_path=str(Path(tok_path).resolve()),
                prompt_path=str(paths.prompt_path), out_path=str(paths.out_path), log_path=str(paths.log_path),
                run_dir=str(run_dir), work_path=str(run_dir / "work.jsonl"), total=len(prompts),
                pending=sum(1 for t in todo if not t.skipped), already_done=len(prompts) - len(pending),
                long_prompts=sum(1 for t in todo if t.truncated or t.skipped),
                omp_threads=omp_threads(dev.nproc), master_port=free_port(), memory=mem, notes=notes,
                fingerprints=fingerprints(ckpt, Path(tok_path)))
    RunLock.check_free(run_dir, paths.out_path)  # a live run's own error comes first, not a settings mismatch
    check_same_settings(plan, run_dir / "plan.json", len(state.done))
    argv = torchrun_argv(plan, run_dir / "plan.json")
    return Setup(lr, paths, ckpt, prompts, todo, plan, argv, state.torn_bytes)


# Settings that change the generated text: one output file must not mix them. The checkpoint and the tokenizer
# are compared by content (Plan.fingerprints), so moving a project folder is no change; the prompts are checked
# row by row against the prompt file (scan_output).
TEXT_SETTINGS = ("max_gen_len",)
TEXT_ENGINE_SETTINGS = ("max_seq_len", "temperature", "top_p", "seed", "quantize")
CONTENT_SETTINGS = (("checkpoint", "ckpt_dir"), ("tokenizer", "tokenizer_path"))


def fingerprints(ckpt: Checkpoint, tokenizer_path: Path) -> dict[str, str]:
    """Short digests of what the text depends on. Checkpoint: params.json, checklist.chk (Meta's md5 of every
    shard) and, per shard, its name, size and first and last MiB (a torch zip file ends with the CRC-32 of every
    tensor), so fine-tunes of one shape differ; reading 2 MiB per shard keeps it instant. Tokenizer: the file."""
    h = hashlib.sha256((ckpt.path / "params.json").read_bytes())
    if (ckpt.path / "checklist.chk").is_file():
        h.update((ckpt.path / "checklist.chk").read_bytes())
    for shard in ckpt.shards:
        size = shard.stat().st_size
        h.update(f"{shard.name}:{size}".encode())
        with open(shard, "rb") as f:
            h.update(f.read(1 << 20))
            f.seek(max(0, size - (1 << 20)))
            h.update(f.read(1 << 20))
    return {"checkpoint": h.hexdigest()[:16],
            "tokenizer": hashlib.sha256(Path(tokenizer_path).read_bytes()).hexdigest()[:16]}


def changed_settings(old: dict[str, Any], plan: Plan) -> list[str]:
    """'temperature 0.8 -> 1.0' for every text-changing setting that differs from an earlier plan (as JSON)."""
    new = asdict(plan)
    out = []
    for name, path_key in CONTENT_SETTINGS:
        old_fp, new_fp = old.get("fingerprints", {}).get(name), new["fingerprints"].get(name)
        if old_fp and new_fp:
            if old_fp != new_fp:
                out.append(f"{name} {old.get(path_key)!r} -> {new[path_key]!r}" if old.get(path_key) != new[path_key]
                           else f"{name} files in {new[path_key]!r} changed")
        elif path_key in old and old[path_key] != new[path_key]:  # a plan written before fingerprints
            out.append(f"{path_key} {old[path_key]!r} -> {new[path_key]!r}")
    out += [f"{k} {old[k]!r} -> {new[k]!r}" for k in TEXT_SETTINGS if k in old and old[k] != new[k]]
    out += [f"{k} {old['engine'][k]!r} -> {new['engine'][k]!r}" for k in TEXT_ENGINE_SETTINGS
            if k in old.get("engine", {}) and old["engine"][k] != new["engine"][k]]
    return out


def check_same_settings(plan: Plan, previous_plan: Path, rows_in_output: int) -> None:
    """The output's earlier run (interrupted, or finished: its plan is kept) used other text-changing settings:
    adding rows with the new ones would mix two datasets in one file, and re-running a finished output with new
    settings would silently do nothing. Either is an error that names the changed settings."""
    if rows_in_output == 0 or not previous_plan.is_file():
        return  # no rows yet: nothing to mix
    try:
        old = json.loads(previous_plan.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return
    changed = changed_settings(old, plan)
    if not changed:
        return
    settings = "; ".join(changed)
    if plan.pending == 0 and plan.already_done == plan.total:
        raise LlamakitError(f"this output is complete and was written with other settings ({settings}), so "
                            "nothing would be generated", "to generate with the new settings give a new output file "
                            "(--out NEW.jsonl); to keep this one, leave the settings as they were", plan.out_path)
    raise LlamakitError(f"this output was started with other settings ({settings}); adding rows now would mix "
                        "them in one file", "resume with the settings it was started with, or give a new output "
                        "file (--out NEW.jsonl) for the new ones", plan.out_path)


# ---------------------------------------------------------------- locks, run folder


class RunLock:
    """One `llamakit run` per output file; also refuses to start while workers of a killed run still write."""

    def __init__(self, run_dir: Path, out_path: Path):
        self.run_dir, self.out_path = run_dir, out_path
        self.fd = -1

    @staticmethod
    def check_free(run_dir: Path, out_path: Path) -> None:
        """Raise the 'another run is writing' error now if a run holds the lock; creates nothing."""
        lock = run_dir / "lock"
        if not lock.is_file():
            return
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunLock._busy(fd, out_path) from None
        finally:
            os.close(fd)

    @staticmethod
    def _busy(fd: int, out_path: Path) -> LlamakitError:
        """The error for a lock file that another run holds (its pid is written in it)."""
        other = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return LlamakitError(f"another llamakit run (pid {other or '?'}) is writing this output",
                             "wait for it to finish, or stop it; then re-run to resume", out_path)

    def __enter__(self) -> "RunLock":
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.run_dir / "lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            err = self._busy(self.fd, self.out_path)
            os.close(self.fd)
            raise err from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        wfd = os.open(self.run_dir / "writers.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(wfd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # workers hold it shared while they write
        except BlockingIOError:
            os.close(wfd)
            self.__exit__()
            raise LlamakitError("worker processes of an earlier run are still writing this output",
                                "wait for them to exit (or kill them: `pgrep -f llamakit.run.worker`), "
                                "then re-run to resume", self.out_path) from None
        fcntl.flock(wfd, fcntl.LOCK_UN)
        os.close(wfd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _write_work(setup: Setup) -> None:
    """The workers' input: one line per prompt to generate (key, tokens, what the output row needs)."""
    tmp = Path(setup.plan.work_path + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for t in setup.todo:
            if t.skipped:
                continue
            p = t.prompt
            f.write(json.dumps({"key": p.index, "tokens": t.tokens, "id": p.id, "prompt": p.text,
                                "extra": p.extra, "truncated": t.truncated}, ensure_ascii=False) + "\n")
    os.replace(tmp, setup.plan.work_path)


def _collect_error(run_dir: Path) -> dict[str, Any] | None:
    """The first failure among the per-rank error files (earliest time, then lowest rank)."""
    errors = []
    for p in run_dir.glob("error.rank*.json"):
        try:
            errors.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, json.JSONDecodeError):
            continue
    if not errors:
        return None
    return min(errors, key=lambda e: (e.get("time", 0), e.get("rank", 0)))


class _Follower:
    """Counts rows appended to the output file since the run started (all replicas write there)."""

    def __init__(self, path: Path):
        self.path = path
        self.offset = path.stat().st_size if path.exists() else 0
        self.buf = b""
        self.rows = 0
        self.tokens = 0

    def poll(self) -> None:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:  # not there yet (or not a file): nothing to count
            return
        self.offset += len(data)
        self.buf += data
        *lines, self.buf = self.buf.split(b"\n")
        for raw in lines:
            try:
                row = json.loads(raw)
            except json.JSONDecodeError:
                continue
            self.rows += 1
            self.tokens += int(row.get("completion_tokens", 0) or 0)


# ---------------------------------------------------------------- the run


def _log_to(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s launcher  %(message)s", "%Y-%m-%d %H:%M:%S"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False
    return handler


def _stop(proc: subprocess.Popen, plan: Plan, why: str) -> LlamakitError:
    """Stop torchrun (it stops its workers), wait for it, and say how to resume."""
    log.info("%s: stopping torchrun and the workers (torchrun's 'SignalException' tracebacks below are its "
             "normal reaction to the stop, not another error)", why)
    try:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    except ProcessLookupError:
        pass
    return LlamakitError(f"{why}; the rows written so far are kept", "re-run the same command to resume",
                         plan.out_path)


def spawn(setup: Setup, on_progress: ProgressFn | None = None, poll_s: float = 0.5) -> int:
    """Start torchrun for the plan, follow the output until it exits; returns torchrun's exit code."""
    plan = setup.plan
    follower = _Follower(Path(plan.out_path))
    env = worker_env(plan)
    start = time.monotonic()
    last_log = start
    first: tuple[float, int] | None = None
    stopped: list[str] = []

    def on_term(signum: int, frame: object) -> None:  # `kill PID` of the launcher must not orphan the workers
        stopped.append(signal.Signals(signum).name)

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread: leave signals alone
        previous = None
    with open(plan.log_path, "ab") as logf:  # torchrun's and the workers' own output goes to the log only
        proc = subprocess.Popen(setup.argv, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
        try:
            while True:
                if stopped:
                    raise _stop(proc, plan, f"stopped by {stopped[0]}")
                rc = proc.poll()
                follower.poll()
                now = time.monotonic()
                if follower.rows and first is None:
                    first = (now, follower.tokens)
                # the rate counts from the first finished row, so model loading does not dilute it
                prog = Progress(follower.rows, plan.pending, follower.tokens - (first[1] if first else 0),
                                now - first[0] if first else 0.0, "generating" if follower.rows else "loading",
                                follower.tokens, now - start)
                if on_progress:
                    on_progress(prog)
                if now - last_log >= 30 or (rc is not None and follower.rows):
                    log.info("progress: %d/%d rows, %d tokens, %.1f tok/s", prog.done, prog.total, follower.tokens,
                             prog.tok_per_s)
                    last_log = now
                if rc is not None:
                    return rc
                time.sleep(poll_s)
        except KeyboardInterrupt:  # Ctrl-C: torchrun got the same SIGINT from the terminal
            raise _stop(proc, plan, "interrupted (Ctrl-C)") from None
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _clean_run_dir(run_dir: Path) -> None:
    """After success, under the lock: keep only `lock` (removing it under a waiting run would let two in) and
    plan.json (the settings this output was made with, so a re-run with other settings is told so)."""
    for entry in run_dir.iterdir():
        if entry.name in ("lock", "plan.json"):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def _prepare_output(setup: Setup) -> int:
    """Clear leftovers of a killed run, cut a torn last row, write the rows of skipped prompts; returns them."""
    out_path, run_dir = Path(setup.plan.out_path), Path(setup.plan.run_dir)
    for stale in [*run_dir.glob("error.rank*.json"), out_path.with_name(f".{out_path.name}.sorting")]:
        stale.unlink(missing_ok=True)
    cut = repair_tail(out_path)
    if cut:
        log.info("repaired the output: cut a torn last line of %d bytes (its prompt is generated again)", cut)
    skipped = [t for t in setup.todo if t.skipped]
    if skipped:
        with RowWriter(out_path) as w:
            for t in skipped:
                p = t.prompt
                w.write(output_row(p.id, p.text, p.extra, "", t.n_tokens, 0, "skipped"))
        log.info("wrote %d rows with finish_reason skipped (prompt too long, on_long_prompt: skip)", len(skipped))
    return len(skipped)


def _worker_error(rc: int, plan: Plan) -> LlamakitError:
    """The error to show when torchrun failed: the first failing rank's own line, once."""
    err = _collect_error(Path(plan.run_dir))
    if err is None:
        log.error("torchrun exited with code %d and no worker reported an error", rc)
        return LlamakitError(f"the worker processes failed (torchrun exit code {rc}) without a message",
                             "see the end of the log; re-run the same command to resume", plan.log_path)
    log.error("rank %s failed: %s", err.get("rank"), err.get("message"))
    what = err.get("what") or err.get("message", "worker failed")
    fix = err.get("fix") or f"see the traceback in the log ({plan.log_path})"
    if "resume" not in fix:
        fix += "; then re-run to resume"
    return LlamakitError(f"rank {err.get('rank')}: {what}", fix, err.get("where"), err.get("line"))


def _finish(setup: Setup, n_skipped: int, t0: float) -> Summary:
    """Check every prompt has its row, rewrite the file in input order, and sum up."""
    plan, out_path = setup.plan, Path(setup.plan.out_path)
    state = scan_output(out_path, setup.prompts)
    missing = [p for p in setup.prompts if id_key(p.id) not in state.done]
    if missing:
        raise LlamakitError(f"the workers finished but {len(missing)} prompts have no row "
                            f"(first: id {missing[0].id!r})", "re-run the same command to complete them", out_path)
    rows = finalize_output(out_path, setup.prompts)
    log.info("wrote %d rows in input order", rows)
    generated = [t for t in setup.todo if not t.skipped]
    tokens = _tokens_of(out_path, {id_key(t.prompt.id) for t in generated})
    summary = Summary(str(out_path), plan.log_path, plan.total, plan.already_done, len(generated), n_skipped,
                      sum(1 for t in generated if t.truncated), tokens, time.monotonic() - t0,
                      [f"note: {n}" for n in plan.notes])
    for line in summary.lines():
        log.info("summary: %s", line)
    return summary


def execute(setup: Setup, on_progress: ProgressFn | None = None) -> Summary:
    """Write the run folder, spawn the ranks, then check and reorder the output; raises the first rank's error."""
    plan = setup.plan
    handler = _log_to(Path(plan.log_path))
    t0 = time.monotonic()
    try:
        with RunLock(Path(plan.run_dir), Path(plan.out_path)):
            log.info("llamakit run %s", setup.loaded.path)
            for line in describe(plan, setup.argv):
                log.info("plan: %s", line)
            if plan.pending or any(t.skipped for t in setup.todo):
                # this run writes rows: record its settings before the first row (a resume compares them)
                plan.master_port = free_port()  # fresh: the one picked while planning may be taken by now
                setup.argv = torchrun_argv(plan, setup.plan_file)
                plan.save(setup.plan_file)
            n_skipped = _prepare_output(setup)
            if plan.pending:
                _write_work(setup)
                log.info("starting %d processes: %s", plan.nproc, " ".join(setup.argv))
                rc = spawn(setup, on_progress)
                if rc != 0:
                    raise _worker_error(rc, plan)
            summary = _finish(setup, n_skipped, t0)
            _clean_run_dir(Path(plan.run_dir))
        return summary
    except LlamakitError as e:
        log.error("error: %s", e.one_line())
        raise
    finally:
        log.removeHandler(handler)
        handler.close()


def _tokens_of(path: Path, keys: set[str]) -> int:
    total = 0
    with open(path, encoding="utf-8") as f:
        for raw in f:
            row = json.loads(raw)
            if id_key(row["id"]) in keys:
                total += int(row.get("completion_tokens", 0))
    return total
