"""`llamakit score` end to end on run's machinery: validate everything, plan MP x DP, spawn torchrun with the
score worker, follow progress, finish the output in input order, and end with the AUROC table when labelled."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamakit.checkpoint.shards import Checkpoint, open_checkpoint
from llamakit.errors import LlamakitError
from llamakit.memory import fmt_gib, plan_memory, weight_dtype
from llamakit.run.output import clean_run_dir, finalize_output, id_key, read_rows, repair_tail, scan_output
from llamakit.run.plan import choose_devices, cuda_facts, describe_gpu, free_port, omp_threads, torchrun_argv
from llamakit.run.recipe import LoadedRecipe, check_writable, resolve_path
from llamakit.run.resume import RunLock, fingerprints
from llamakit.run.progress import Tracker
from llamakit.run.status import StatusFile
from llamakit.run.supervise import ProgressFn, _log_to, _worker_error, spawn
from llamakit.score.reduce import CHUNK_ELEMENTS
from llamakit.score.recipe import load_score_recipe
from llamakit.score.stats import REFERENCE_STATS, SCORE_STATS
from llamakit.score.texts import Text, Tokenized, read_texts, tokenize
from llamakit.tokenizer import Tokenizer, find_tokenizer

log = logging.getLogger("llamakit.run")

WORKER = "llamakit.score.worker"
# Settings that change the scores: one output file must not mix them (compared on resume).
SCORE_SETTINGS = ("max_seq_len", "stride", "dtype", "quantize", "per_token", "text_field", "prefix_field")


@dataclass
class ScorePlan:
    """Everything a score worker needs, decided by the launcher; written as JSON for torchrun's ranks. Field names
    shared with run's Plan (device, backend, omp_threads, out_path, log_path, run_dir, pending, engine) let run's
    supervisor and error reporting serve both."""

    mp: int
    dp: int
    device: str
    dtype: str
    backend: str
    gpus: list[str]
    engine: dict[str, Any]  # max_seq_len, max_batch_size, quantize (what run's OOM advice reads)
    stride: int | None
    per_token: bool
    ckpt_dir: str
    reference_ckpt_dir: str | None
    tokenizer_path: str
    text_path: str
    out_path: str
    log_path: str
    run_dir: str
    work_path: str
    total: int
    pending: int
    already_done: int
    omp_threads: int
    master_port: int
    memory: str = ""
    notes: list[str] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)  # what the scores depend on (SCORE_SETTINGS + digests)

    @property
    def nproc(self) -> int:
        return self.mp * self.dp

    def save(self, path: Path) -> None:
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(asdict(self), ensure_ascii=False, indent=1), encoding="utf-8")
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "ScorePlan":
        return cls(**json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class ScoreSetup:
    """A fully validated score run: nothing has been written yet."""

    loaded: LoadedRecipe
    texts: list[Text]
    todo: list[Tokenized]
    plan: ScorePlan
    argv: list[str]
    label_field: str | None

    @property
    def plan_file(self) -> Path:
        return Path(self.plan.run_dir) / "plan.json"


@dataclass
class ScoreSummary:
    out_path: str
    log_path: str
    total: int
    already_done: int
    scored: int
    tokens: int
    seconds: float
    auroc: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        rate = f", {self.tokens / self.seconds:.1f} tok/s overall" if self.seconds > 0 and self.tokens else ""
        return ([f"{self.total} texts: {self.scored} scored now, {self.already_done} were already in the output "
                 f"(resumed)", f"{self.tokens} tokens scored in {self.seconds:.1f} s including start-up{rate}",
                 f"output: {self.out_path}", f"log: {self.log_path}"] + self.auroc + self.notes)


# ---------------------------------------------------------------- validation (no side effects)


def check_reference(lr: LoadedRecipe, ckpt: Checkpoint, ref: Checkpoint, tok_path: Path) -> None:
    """The reference must split over the same GPUs (same MP) and read the same token ids (same tokenizer)."""
    place, line = lr.where("reference_ckpt_dir")
    if ref.mp != ckpt.mp:
        src = str(ref.path).rstrip("/")
        raise LlamakitError(f"key 'reference_ckpt_dir': the reference has MP={ref.mp} shards, ckpt_dir has "
                            f"MP={ckpt.mp}; both models are sharded over the same GPUs",
                            f"convert the reference once: `llamakit reshard {src} {src}-mp{ckpt.mp} --mp {ckpt.mp}` "
                            f"and set reference_ckpt_dir: {src}-mp{ckpt.mp}", place, line)
    try:
        ref_tok = find_tokenizer(ref.path)
    except LlamakitError:
        ref_tok = None
    same = ref_tok is None or hashlib.sha256(ref_tok.read_bytes()).digest() == \
        hashlib.sha256(Path(tok_path).read_bytes()).digest()
    if not same or ref.vocab_rows != ckpt.vocab_rows:
        shown = f"{ref_tok}" if ref_tok is not None and not same else f"{ref.vocab_rows} embedding rows"
        raise LlamakitError(f"key 'reference_ckpt_dir': the reference uses another tokenizer ({shown}) than ckpt_dir "
                            f"({tok_path}, {ckpt.vocab_rows} rows), so its token ids mean other tokens",
                            "use a reference of the same model family (same tokenizer.model), e.g. the base model "
                            "of a chat model", place, line)


def _memory(lr: LoadedRecipe, ckpt: Checkpoint, ref: Checkpoint | None, dev: Any, quantize: str,
            max_seq_len: int) -> tuple[str, list[str]]:
    """Per-GPU estimate: the weights of both models, one model's activations, and the reduction's bound."""
    dtype = weight_dtype(dev.dtype, quantize)
    q = plan_memory(ckpt.config, ckpt.vocab_rows, dev.mp, dtype, 0, max_seq_len)
    ref_w = plan_memory(ref.config, ref.vocab_rows, dev.mp, dtype, 0, max_seq_len).weights if ref else 0
    reduction = 8 * 4 * CHUNK_ELEMENTS * (2 if ref else 1)
    total = q.weights + ref_w + q.overhead + reduction
    text = (f"weights {fmt_gib(q.weights)}" + (f" + reference {fmt_gib(ref_w)}" if ref else "")
            + f" + overhead {fmt_gib(q.overhead)} + reductions {fmt_gib(reduction)} = {fmt_gib(total)} per "
            + ("GPU" if dev.device == "cuda" else "process"))
    if dev.gpus:
        small = min(g.total_bytes for g in dev.gpus)
        if total > small:
            place, line = lr.where("reference_ckpt_dir" if ref else "ckpt_dir")
            raise LlamakitError(f"the models do not fit: {text}, the GPU has {fmt_gib(small)}",
                                "set quantize: int8 (half the weights), or use more GPUs (a higher MP, both models "
                                "resharded to it)", place, line)
    return text, []


def _check_same_settings(plan: ScorePlan, previous: Path, rows: int) -> None:
    """An output is continued only with the settings its rows were scored with (one file, one dataset)."""
    if rows == 0 or not previous.is_file():
        return
    try:
        old = json.loads(previous.read_text(encoding="utf-8")).get("settings", {})
    except (OSError, json.JSONDecodeError):
        return
    changed = [f"{k} {old[k]!r} -> {plan.settings.get(k)!r}" for k in old if old[k] != plan.settings.get(k)]
    if changed:
        raise LlamakitError(f"this output was scored with other settings ({'; '.join(changed)}); adding rows now "
                            "would mix them in one file", "resume with the settings it was started with, or give "
                            "a new output file (--out NEW.jsonl)", plan.out_path)


def plan_score(recipe: str | Path, overrides: list[str] | None = None, flags: dict[str, Any] | None = None,
               gpu_facts: tuple[list, bool] | None = None) -> ScoreSetup:
    """Validate recipe, checkpoints, tokenizer, texts and output; decide MP x DP; write nothing."""
    lr = load_score_recipe(recipe, overrides, flags)
    r = lr.recipe
    out = resolve_path(lr, "out_path", r.out_path)
    log_path = resolve_path(lr, "logging_path", r.logging_path) if r.logging_path else out.with_suffix(".log")
    text_path = resolve_path(lr, "text_path", r.text_path)
    for key, path, other in (("out_path", out, text_path), ("logging_path", log_path, out),
                             ("logging_path", log_path, text_path)):
        if path == other:
            place, line = lr.where(key)
            raise LlamakitError(f"key '{key}' is the same file as {other}", "give it a file of its own", place, line)
    check_writable(lr, "out_path", out)
    check_writable(lr, "logging_path", log_path)
    ckpt_dir = resolve_path(lr, "ckpt_dir", r.ckpt_dir)
    ckpt = open_checkpoint(ckpt_dir)
    tok_path = resolve_path(lr, "tokenizer_path", r.tokenizer_path) if r.tokenizer_path else find_tokenizer(ckpt_dir)
    tok = Tokenizer(tok_path)
    from llamakit.run.plan import check_tokenizer

    check_tokenizer(ckpt, tok)
    ref = None
    if r.reference_ckpt_dir:
        ref = open_checkpoint(resolve_path(lr, "reference_ckpt_dir", r.reference_ckpt_dir))
        check_reference(lr, ckpt, ref, Path(tok_path))
    texts = read_texts(text_path, r.text_field, r.prefix_field, r.id_field, r.label_field)
    if r.label_field:  # the AUROC table at the end needs two labels: say so now, not after hours of scoring
        from llamakit.score.auroc import positive_label

        try:
            positive_label([t.extra[r.label_field] for t in texts])
        except LlamakitError as e:
            raise LlamakitError(e.what, e.fix, text_path) from None
    state = scan_output(out, texts)  # type: ignore[arg-type]  # Text has Prompt's id/text/extra/line
    pending = [t for t in texts if id_key(t.id) not in state.done]
    hint = f" (recipe {lr.describe('max_seq_len')})"
    todo = tokenize(pending, lambda xs: tok.encode_batch(xs), tok.bos_id, r.max_seq_len, r.stride, text_path, hint)
    gpus, cuda_ok = gpu_facts if gpu_facts is not None else cuda_facts()
    dev = choose_devices(r.device, r.dtype, r.nproc, ckpt.mp, gpus, cuda_ok, lr.describe("device"), ckpt_dir)
    mem, notes = _memory(lr, ckpt, ref, dev, r.quantize, r.max_seq_len)
    if state.torn_bytes:
        notes.append(f"the output's last line is torn ({state.torn_bytes} bytes, a killed run): it is cut off "
                     "and that text scored again")
    settings: dict[str, Any] = {k: getattr(r, k, None) for k in SCORE_SETTINGS}
    settings["dtype"] = dev.dtype
    fps = fingerprints(ckpt, Path(tok_path))
    settings.update(checkpoint=fps["checkpoint"], tokenizer=fps["tokenizer"],
                    reference=fingerprints(ref, Path(tok_path))["checkpoint"] if ref else None)
    run_dir = out.parent / f".{out.name}.llamakit"
    plan = ScorePlan(mp=dev.mp, dp=dev.dp, device=dev.device, dtype=dev.dtype, backend=dev.backend,
                     gpus=[describe_gpu(g) for g in dev.gpus],
                     engine={"max_seq_len": r.max_seq_len, "max_batch_size": r.max_batch_size,
                             "quantize": r.quantize},
                     stride=r.stride, per_token=r.per_token, ckpt_dir=str(ckpt_dir),
                     reference_ckpt_dir=str(ref.path) if ref else None, tokenizer_path=str(Path(tok_path).resolve()),
                     text_path=str(text_path), out_path=str(out), log_path=str(log_path), run_dir=str(run_dir),
                     work_path=str(run_dir / "work.jsonl"), total=len(texts), pending=len(todo),
                     already_done=len(texts) - len(pending), omp_threads=omp_threads(dev.nproc),
                     master_port=free_port(), memory=mem, notes=notes, settings=settings)
    RunLock.check_free(run_dir, out)
    _check_same_settings(plan, run_dir / "plan.json", len(state.done))
    return ScoreSetup(lr, texts, todo, plan, torchrun_argv(plan, run_dir / "plan.json", WORKER),  # type: ignore[arg-type]
                      r.label_field)


def describe(plan: ScorePlan, argv: list[str]) -> list[str]:
    """Human lines for --dry-run and the log."""
    import shlex

    e = plan.engine
    lines = [f"checkpoint   {plan.ckpt_dir}  (MP={plan.mp})"]
    if plan.reference_ckpt_dir:
        lines.append(f"reference    {plan.reference_ckpt_dir}  (same GPUs)")
    lines += [
        f"tokenizer    {plan.tokenizer_path}",
        f"texts        {plan.text_path}: {plan.total} texts, {plan.already_done} already in the output, "
        f"{plan.pending} to score",
        f"output       {plan.out_path}" + (" (with per-token lists)" if plan.per_token else ""),
        f"log          {plan.log_path}",
        f"parallelism  MP={plan.mp} x DP={plan.dp} = {plan.nproc} process{'es' if plan.nproc > 1 else ''}, "
        f"backend {plan.backend}",
        f"devices      {plan.device}" + (": " + "; ".join(plan.gpus) if plan.gpus else
                                         f" ({plan.omp_threads} threads per process)"),
        f"dtype        {plan.dtype}" + (f", quantize {e['quantize']}" if e["quantize"] != "none" else ""),
        f"batch        max_batch_size {e['max_batch_size']} windows per forward, max_seq_len {e['max_seq_len']}"
        + (f", stride {plan.stride}" if plan.stride else ""),
    ]
    if plan.memory:
        lines.append(f"memory       {plan.memory}")
    lines += [f"note         {n}" for n in plan.notes]
    lines.append(f"command      {shlex.join(argv)}")
    return lines


# ---------------------------------------------------------------- the run


def _write_work(todo: list[Tokenized], path: Path) -> None:
    tmp = Path(str(path) + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for t in todo:
            f.write(json.dumps({"key": t.text.index, "id": t.text.id, "tokens": t.tokens, "n_context": t.n_context,
                                "extra": t.text.extra}, ensure_ascii=False) + "\n")
    tmp.replace(path)


def _finish(setup: ScoreSetup, t0: float) -> ScoreSummary:
    """Every text has its row; rewrite in input order; the AUROC table when the texts are labelled."""
    plan, out = setup.plan, Path(setup.plan.out_path)
    state = scan_output(out, setup.texts)  # type: ignore[arg-type]
    missing = [t for t in setup.texts if id_key(t.id) not in state.done]
    if missing:
        raise LlamakitError(f"the workers finished but {len(missing)} texts have no row (first: id "
                            f"{missing[0].id!r})", "re-run the same command to complete them", out)
    finalize_output(out, setup.texts)  # type: ignore[arg-type]
    rows = [row for _, row in read_rows(out)]
    new = {id_key(t.text.id) for t in setup.todo}
    tokens = sum(int(r.get("n_tokens") or 0) for r in rows if id_key(r["id"]) in new)
    summary = ScoreSummary(str(out), plan.log_path, plan.total, plan.already_done, len(setup.todo), tokens,
                           time.monotonic() - t0, notes=[f"note: {n}" for n in plan.notes])
    if setup.label_field:
        from llamakit.score.auroc import write_report

        stats = [s for s in SCORE_STATS if plan.reference_ckpt_dir or s not in REFERENCE_STATS]
        table, txt, png = write_report(rows, setup.label_field, stats, out)
        summary.auroc = table + [f"AUROC table: {txt}", f"ROC plot: {png}"]
    for line in summary.lines():
        log.info("summary: %s", line)
    return summary


def execute_score(setup: ScoreSetup, on_progress: ProgressFn | None = None) -> ScoreSummary:
    """Take the output's lock, spawn the ranks (run's supervisor), then check, reorder and sum up."""
    plan = setup.plan
    handler = _log_to(Path(plan.log_path))
    t0 = time.monotonic()
    status: StatusFile | None = None
    try:
        with RunLock(Path(plan.run_dir), Path(plan.out_path)):
            status = StatusFile(Path(plan.run_dir), command=f"llamakit score {shlex.quote(str(setup.loaded.path))}",
                                cwd=os.getcwd(), recipe=str(setup.loaded.path), out_path=plan.out_path,
                                log_path=plan.log_path, total=plan.total, done_before=plan.already_done,
                                todo=plan.pending, done=0, gpus=plan.gpus, phase="starting")
            status.update(force=True)  # `llamakit status` reads a score run as it reads a generation run
            tracker = Tracker(plan.pending)
            log.info("llamakit score %s", setup.loaded.path)
            for line in describe(plan, setup.argv):
                log.info("plan: %s", line)
            for stale in Path(plan.run_dir).glob("error.rank*.json"):
                stale.unlink(missing_ok=True)
            cut = repair_tail(Path(plan.out_path))
            if cut:
                log.info("repaired the output: cut a torn last line of %d bytes (its text is scored again)", cut)
            if plan.pending:
                plan.master_port = free_port()
                setup.argv = torchrun_argv(plan, setup.plan_file, WORKER)  # type: ignore[arg-type]
                plan.save(setup.plan_file)  # before the first row: a resume compares its settings
                _write_work(setup.todo, Path(plan.work_path))
                log.info("starting %d processes: %s", plan.nproc, " ".join(setup.argv))
                rc = spawn(setup, on_progress, tracker=tracker, status=status)  # type: ignore[arg-type]
                if rc != 0:
                    raise _worker_error(rc, plan)  # type: ignore[arg-type]
            status.update(force=True, phase="finishing")
            summary = _finish(setup, t0)
            clean_run_dir(Path(plan.run_dir))
            status.update(tracker.last, force=True, phase="complete")
        return summary
    except LlamakitError as e:
        log.error("error: %s", e.one_line())
        if status is not None:
            status.update(force=True, phase="stopped", error=e.one_line())
        raise
    finally:
        log.removeHandler(handler)
        handler.close()

