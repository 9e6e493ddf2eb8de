"""The resume contract: an output is continued only with the settings it was started with, by one run at a time."""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llamakit.checkpoint.shards import Checkpoint
from llamakit.errors import LlamakitError
from llamakit.run.decoding import DEFAULT_SAMPLING

if TYPE_CHECKING:
    from llamakit.run.plan import Plan

# Settings that change the generated text: one output file must not mix them. The checkpoint and the tokenizer
# are compared by content (Plan.fingerprints), so moving a project folder is no change; the prompts are checked
# row by row against the prompt file (scan_output).
TEXT_SETTINGS = ("max_gen_len", "chat_format")
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
    # the other decoding keys (a plan from before they existed used their defaults); rows' own keys: scan_output
    before = {**DEFAULT_SAMPLING, **old.get("sampling", {})}
    out += [f"{k} {before[k]!r} -> {new['sampling'][k]!r}" for k in new.get("sampling", {})
            if k not in TEXT_ENGINE_SETTINGS and before.get(k) != new["sampling"][k]]
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


class RunLock:
    """One `llamakit run` per output file; also refuses to start while workers of a killed run still write."""

    def __init__(self, run_dir: Path, out_path: Path, name: str = "lock"):
        self.run_dir, self.out_path, self.name = run_dir, out_path, name  # name: lock.nodeR over several nodes
        self.fd = -1

    @staticmethod
    def check_free(run_dir: Path, out_path: Path, name: str = "lock") -> None:
        """Raise the 'another run is writing' error now if a run holds the lock; creates nothing."""
        lock = run_dir / name
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
    def holder(run_dir: Path, name: str = "lock") -> str | None:
        """The pid (as written in the lock file) of the run holding the lock, or None when no run holds it."""
        lock = run_dir / name
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
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
        self.fd = os.open(self.run_dir / self.name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            err = self._busy(self.fd, self.out_path)
            os.close(self.fd)
            raise err from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, str(os.getpid()).encode(), 0)
        if self.name != "lock":  # over several nodes: the workers' lock would be one more lock between hosts
            return self
        wfd = os.open(self.run_dir / "writers.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(wfd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # workers hold it shared while they write
        except BlockingIOError:
            os.close(wfd)
            self.__exit__()
            pids = _writers(self.run_dir)
            stop = f"`kill {' '.join(map(str, pids))}`" if pids else \
                f"`pkill -f 'llamakit.run.worker {self.run_dir / 'plan.json'}'`"
            raise LlamakitError(f"worker processes of an earlier run are still writing this output"
                                f"{' (pid ' + ', '.join(map(str, pids)) + ')' if pids else ''}",
                                f"wait for them to exit, or stop them: {stop}; then re-run to resume",
                                self.out_path) from None
        fcntl.flock(wfd, fcntl.LOCK_UN)
        os.close(wfd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _writers(run_dir: Path) -> list[int]:
    """Pids of worker processes started for this run folder (their command line names its plan.json)."""
    import psutil

    plan = str(run_dir / "plan.json")
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if "llamakit.run.worker" in cmd and plan in cmd:
            found.append(p.pid)
    return sorted(found)
