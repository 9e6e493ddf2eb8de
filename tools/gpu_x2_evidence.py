"""The 2-GPU evidence for issue #16 in one device call (nvidia-h200-x2): four steps, each with its own timeout, a
failure in one not stopping the others; results in $OUT/summary.json plus one log per step (6 files in all).

  a  `llamakit run` (not bench) of a 7B-shaped MP=1 checkpoint on disk (random bf16 weights, the tiny tokenizer's
     512-token vocabulary), 1,024 text prompts of ~140 tokens, max_gen_len 256 with eos, temperature 0.6: on one
     GPU (--nproc 1) and at DP=2 (--nproc 2); tok/s while generating and overall, from each run's summary.
  b  a 30B-shaped checkpoint (dim 6656, 52 heads; --b-layers of its 60 layers, 12 by default so that the MP=4
     copy and its MP=2 reshard fit the disk and the time) written at MP=4, `llamakit reshard` 4 -> 2, run at MP=2:
     once uninterrupted, once killed with kill -9 of the launcher mid-run and resumed; every id once, the texts
     compared with the uninterrupted run's, and whether the workers died with the launcher (--b-batch-invariant:
     both runs with batch_invariant: true, so a resume at another batch composition gives the same bits).
  c  the users' 48 GB RTX A6000 emulated: 13B shape at MP=2, each process capped to gpu_memory_utilization 0.34
     of an H200, on the dataset workload (1,024 prompts, max_gen_len drawn per prompt). After: `llamakit bench
     --preset 13b --mp 2 --workload dataset --gpu-memory-utilization 0.34 --json`. Before: the fixed-slot engine of
     commit 6025c86 (the tree in --before, default .before/): its bench has no dataset workload and no memory cap,
     so this script runs that tree's engine itself (`--before-worker`, under torchrun, PYTHONPATH=that tree) on
     the same prompts and max_gen_len, capped with torch.cuda.set_per_process_memory_fraction, with as many
     slots of max_seq_len as that tree's own memory plan (memory.max_batch_that_fits) fits in the cap.
  d  `llamakit bench --preset 65b --mp 2 --quantize int8 --json` (must not end in "benchmark workers failed").

Device command (from the checkout root, the 6025c86 tree at .before/, the carried wheels (fairscale, pydantic)
importable through the caller's PYTHONPATH, which every command here keeps behind this checkout or that tree; a
`PYTHONPATH=$PWD` prefix on this line would drop them, and the before worker then fails on `import fairscale`):

    export PYTHONPATH=/tmp/site:$PWD NCCL_NVLS_ENABLE=0
    python3 tools/gpu_x2_evidence.py --out $OUT

Estimated 8-9 minutes in all (a ~2, b ~2, c ~3, d ~2); --budget (560 s) ends every command in time for the
summary to be written before the device's 10 minutes, and summary.json says which commands were skipped. If
some were, run the rest in a second call (`--steps c,d`; c alone: `--steps c --timeout-c 500`). If the
fixed-slot engine runs out of memory at the slots its own plan allowed (it had no reserve for its CUDA graphs), it
runs again at 80 % of them (twice at most), and c's log and summary say so; `--before-slots N` sets the first try's
slots. A worker that fails prints one line naming its rank and error, then its traceback; step logs leave out
torchrun's own traceback and ChildFailedError banner (one line names the ranks' exit codes instead), so the log's tail
shows the worker's error. On CPU, `python tools/gpu_x2_evidence.py --dry --out /tmp/x2` runs every step
end to end on tiny shapes (gloo, 2 processes) in a few minutes.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STEPS = ("a", "b", "c", "d")
DEADLINE = [float("inf")]  # monotonic time by which every command must have ended (--budget)
NAMES = {"a": "a-run-dp2", "b": "b-30b-reshard-kill", "c": "c-13b-cap48", "d": "d-65b-int8"}


class Step:
    """One step's log file and results; every command runs in its own session and is killed whole on timeout."""

    def __init__(self, out: Path, key: str, dry: bool):
        self.log = out / f"{NAMES[key]}.log"
        self.result: dict = {}
        self.dry = dry

    def note(self, text: str) -> None:
        with self.log.open("a", encoding="utf-8") as f:
            f.write(text.rstrip("\n") + "\n")
        print(text, flush=True)

    def env(self, first: str | None = None) -> dict[str, str]:
        """This checkout (or `first`: the 6025c86 tree) ahead of the caller's PYTHONPATH, which keeps the rest (the
        carried wheels, e.g. /tmp/site)."""
        e = dict(os.environ, PYTHONUNBUFFERED="1", NCCL_NVLS_ENABLE="0", TORCH_SYMM_MEM_DISABLE_MULTICAST="1")
        e["PYTHONPATH"] = os.pathsep.join([first or str(REPO)] + [p for p in e.get("PYTHONPATH", "").split(
            os.pathsep) if p])
        return e

    def run(self, cmd: list[str], timeout: float, cwd: Path | None = None, pythonpath: str | None = None,
            tail: int = 25) -> subprocess.CompletedProcess:
        """Run `cmd`, log it with its exit status, time, its error lines and the tail of its output."""
        timeout = min(timeout, DEADLINE[0] - time.monotonic())
        if timeout < 5:
            self.note(f"skipped (the --budget is spent): {' '.join(cmd)}")
            return subprocess.CompletedProcess(cmd, -1, "", "")
        self.note(f"$ {' '.join(cmd)}")
        t0 = time.monotonic()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=cwd,
                             env=self.env(pythonpath), start_new_session=True)
        try:
            out, _ = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            out, _ = p.communicate()
            self.note(f"TIMEOUT after {timeout:.0f} s (process group killed)")
        lines = without_torchrun_banner((out or "").splitlines())
        errors = [ln for ln in lines[:-tail] if re.search(r"Error|Traceback|error:|Exception|failed:", ln)]
        if errors:  # errors printed early, before later output fills the tail
            self.note("error lines:\n" + "\n".join(errors[:20]) + "\n...")
        self.note("\n".join(lines[-tail:]))
        self.note(f"rc={p.returncode} in {time.monotonic() - t0:.1f} s\n")
        return subprocess.CompletedProcess(cmd, p.returncode, out or "", "")


def without_torchrun_banner(lines: list[str]) -> list[str]:
    """`lines` less torchrun's own traceback and ChildFailedError banner (~45 lines, which filled a log's tail and
    hid the workers' errors), with one line in their place naming each failed rank's exit code."""
    ends = [i for i, ln in enumerate(lines) if ln.startswith("torch.distributed.elastic.multiprocessing.errors."
                                                              "ChildFailedError")]
    if not ends:
        return lines
    end = ends[-1]
    # torchrun's traceback is the last one before its exception line (a worker's own tracebacks come earlier)
    start = max((i for i in range(end) if lines[i].startswith("Traceback (most recent call last)")), default=end)
    rules = [i for i in range(end + 1, len(lines)) if re.fullmatch(r"=+", lines[i].strip())]
    stop = rules[1] + 1 if len(rules) > 1 else len(lines)
    banner = "\n".join(lines[end:stop])
    codes = ", ".join(f"rank {r}: exit code {c}" for r, c in
                      re.findall(r"rank\s*:\s*(\d+).*?\n\s*exitcode\s*:\s*(-?\d+)", banner))
    return lines[:start] + [f"[torchrun: workers failed ({codes or 'no exit codes'}); its traceback and banner "
                            "are left out of this log]"] + lines[stop:]


def llamakit(*args: str) -> list[str]:
    return [sys.executable, "-m", "llamakit", *args]


def summary_rates(text: str) -> dict:
    """tok/s while the engine generated and overall (start-up included) from `llamakit run`'s summary."""
    m = re.search(r"(\d+) tokens generated in ([\d.]+) s including start-up", text)
    g = re.search(r"\(([\d.]+) tok/s while the engine generated\)", text)
    after = re.search(r"([\d.]+) tok/s after loading the model", text)
    out: dict = {}
    if m:
        out.update(tokens=int(m.group(1)), seconds=float(m.group(2)),
                   overall_tok_s=round(int(m.group(1)) / max(float(m.group(2)), 0.1), 1))
    if g:
        out["while_generating_tok_s"] = float(g.group(1))
    if after:
        out["after_loading_tok_s"] = float(after.group(1))
    return out


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8")] if path.exists() else []


def tokenizer(work: Path, step: Step) -> Path:
    tiny = work / "tiny"
    if not (tiny / "tokenizer.model").exists():
        step.run(llamakit("make-tiny", str(tiny)), 120)
    return tiny


def write_ckpt(step: Step, dst: Path, tok: Path, preset: str, mp: int, layers: int | None, dry: bool,
               timeout: float = 180) -> Path:
    """Random bf16 weights of a preset's width (vocab of the tiny tokenizer), as Meta lays them out (in a
    subprocess, so that it has a timeout too)."""
    t0 = time.monotonic()
    spec = json.dumps({"dst": str(dst), "tok": str(tok), "preset": preset, "mp": mp, "layers": layers, "dry": dry})
    res = step.run([sys.executable, str(Path(__file__).resolve()), "--write-ckpt", spec], timeout)
    if res.returncode != 0:
        raise RuntimeError(f"writing the {preset}-shaped checkpoint failed (rc {res.returncode})")
    step.note(f"{preset}-shaped MP={mp} checkpoint written in {time.monotonic() - t0:.1f} s")
    return dst


def _write_ckpt(spec_json: str) -> None:
    import dataclasses

    from llamakit.checkpoint.params import PRESETS, ModelConfig
    from llamakit.checkpoint.synth import write_random_checkpoint

    spec = json.loads(spec_json)
    dst, dry = Path(spec["dst"]), spec["dry"]
    cfg = ModelConfig(dim=256, n_layers=2, n_heads=8, multiple_of=64, norm_eps=1e-6) if dry else \
        PRESETS[spec["preset"]]
    cfg = cfg.with_vocab(512)
    if spec["layers"] and not dry:
        cfg = dataclasses.replace(cfg, n_layers=spec["layers"])
    shutil.rmtree(dst, ignore_errors=True)
    write_random_checkpoint(dst, cfg, mp=spec["mp"], dtype="bf16", vocab=512, device="cpu" if dry else "cuda",
                            checklist=False)
    shutil.copy(Path(spec["tok"]) / "tokenizer.model", dst / "tokenizer.model")


def recipe(path: Path, ckpt: Path, prompts: Path, out: Path, seq: int, gen: int, batch: int, temp: float,
           dry: bool, invariant: bool = False) -> Path:
    extra = ("device: cpu\ndtype: fp32\n" if dry else "") + ("batch_invariant: true\n" if invariant else "")
    path.write_text(f"ckpt_dir: {ckpt}\nprompt_path: {prompts}\nout_path: {out}\nlogging_path: {out}.log\n"
                    f"max_seq_len: {seq}\nmax_gen_len: {gen}\nmax_batch_size: {batch}\ntemperature: {temp}\n"
                    f"top_p: 0.9\n{extra}", encoding="utf-8")
    return path


def fresh(out: Path) -> None:
    out.unlink(missing_ok=True)
    shutil.rmtree(out.parent / f".{out.name}.llamakit", ignore_errors=True)


# ---------------------------------------------------------------- a: llamakit run, one GPU vs DP=2


def step_a(step: Step, work: Path, args: argparse.Namespace) -> None:
    import random

    tok = tokenizer(work, step)
    ck = tok if args.dry else write_ckpt(step, work / "ck7b", tok, "llama-7b", 1, None, False)  # dry: make-tiny's
    n = 32 if args.dry else 1024
    words = " ".join(json.loads(line)["prompt"] for line in
                     (REPO / "llamakit/assets/demo-prompts.jsonl").open(encoding="utf-8")).split()
    rng = random.Random(0)  # ~140 tokens a prompt with the tiny tokenizer (about 3 characters a token)
    prompts = work / "p-a.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"d{i:04d}", "prompt": " ".join(rng.choice(words) for _ in
                                                                                range(60))}) + "\n"
                               for i in range(n)), encoding="utf-8")
    for nproc in (1, 2):
        out = work / f"out-a-{nproc}.jsonl"
        fresh(out)
        rec = recipe(work / f"r-a-{nproc}.yaml", ck, prompts, out, 1024, 32 if args.dry else 256, 1024, 0.6,
                     args.dry)
        res = step.run(llamakit("run", str(rec), "--nproc", str(nproc)), args.timeout_a / 2)
        ids = collections.Counter(r["id"] for r in rows_of(out))
        log = Path(f"{out}.log").read_text(encoding="utf-8") if Path(f"{out}.log").exists() else ""
        step.note("\n".join(ln for ln in log.splitlines() if "KV cache" in ln or "DP=" in ln)[-2000:])
        step.result[f"nproc{nproc}"] = {"rc": res.returncode, "rows": len(ids), "each_id_once": len(ids) == n and
                                        max(ids.values(), default=0) == 1, **summary_rates(res.stdout)}
    one, two = step.result["nproc1"], step.result["nproc2"]
    if one.get("while_generating_tok_s") and two.get("while_generating_tok_s"):
        step.result["dp2_speedup_while_generating"] = round(two["while_generating_tok_s"] /
                                                            one["while_generating_tok_s"], 2)
        step.result["dp2_speedup_overall"] = round(two["overall_tok_s"] / one["overall_tok_s"], 2)
    if not args.dry:
        shutil.rmtree(work / "ck7b", ignore_errors=True)


# ---------------------------------------------------------------- b: 30B shape, reshard 4 -> 2, kill -9, resume


def kill_launcher_mid_run(step: Step, rec: Path, out: Path, at_rows: int, limit: float) -> dict:
    """Start `llamakit run`, kill -9 the launcher alone once `at_rows` rows exist, then see whether its workers
    die with it (llamakit.lifeline); whatever is left after 30 s is killed and reported."""
    p = subprocess.Popen(llamakit("run", str(rec)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=step.env(), start_new_session=True)
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit and len(rows_of(out)) < at_rows and p.poll() is None:
        time.sleep(0.2)
    finished = p.poll() is not None
    try:  # the launcher's descendants (torchrun, the ranks), wherever their process group is
        import psutil

        family = psutil.Process(p.pid).children(recursive=True)
    except Exception:
        family = None
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    t1, left = time.monotonic(), True
    while time.monotonic() - t1 < 30:
        if family is not None:
            left = any(c.is_running() and c.status() != "zombie" for c in family)
        else:
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                left = False
        if not left:
            break
        time.sleep(0.2)
    if left:
        for c in family or []:
            try:
                c.kill()
            except Exception:
                pass
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    info = {"rows_at_kill": len(rows_of(out)), "finished_before_kill": finished,
            "processes_under_launcher": None if family is None else len(family),
            "workers_gone_after_s": None if left else round(time.monotonic() - t1, 1), "workers_left": left}
    step.note(f"kill -9 of the launcher: {info}")
    return info


def step_b(step: Step, work: Path, args: argparse.Namespace) -> None:
    tok = tokenizer(work, step)
    step.result["layers"] = 2 if args.dry else args.b_layers  # of the 30B shape's 60
    src = write_ckpt(step, work / "ck30-mp4", tok, "llama-30b", 4, args.b_layers, args.dry)
    dst = work / "ck30-mp2"
    shutil.rmtree(dst, ignore_errors=True)
    res = step.run(llamakit("reshard", str(src), str(dst), "--mp", "2"), 300)
    step.result["reshard_rc"] = res.returncode
    shutil.rmtree(src, ignore_errors=True)  # the disk holds one copy at a time
    src_prompts = (REPO / "llamakit/assets/demo-prompts.jsonl").read_text(encoding="utf-8").splitlines()
    n = 24 if args.dry else 400
    prompts = work / "p-b.jsonl"
    prompts.write_text("".join(json.dumps({**json.loads(src_prompts[i % len(src_prompts)]), "id": f"p{i:05d}"},
                                          ensure_ascii=False) + "\n" for i in range(n)), encoding="utf-8")
    gen = 24 if args.dry else 128
    ref, out = work / "out-b-ref.jsonl", work / "out-b.jsonl"
    fresh(ref)
    fresh(out)
    batch = 4 if args.dry else 64  # rows come in waves: the kill lands mid-run
    step.result["batch_invariant"] = args.b_batch_invariant
    r = step.run(llamakit("run", str(recipe(work / "r-b-ref.yaml", dst, prompts, ref, 512, gen, batch, 0.8,
                                            args.dry, args.b_batch_invariant))), args.timeout_b / 4)
    step.result["uninterrupted"] = {"rc": r.returncode, "rows": len(rows_of(ref)), **summary_rates(r.stdout)}
    rec = recipe(work / "r-b.yaml", dst, prompts, out, 512, gen, batch, 0.8, args.dry, args.b_batch_invariant)
    step.result["kill"] = kill_launcher_mid_run(step, rec, out, n // 4, args.timeout_b / 4)
    r = step.run(llamakit("run", str(rec)), args.timeout_b / 4)
    got = rows_of(out)
    ids = collections.Counter(row["id"] for row in got)
    want = {row["id"]: row.get("completion") for row in rows_of(ref)}
    same = sum(1 for row in got if want.get(row["id"]) == row.get("completion"))
    step.result["resumed"] = {"rc": r.returncode, "rows": len(got), "each_id_once": len(ids) == n and
                              max(ids.values(), default=0) == 1, "texts_identical_to_uninterrupted": same,
                              "of": len(want), **summary_rates(r.stdout)}
    shutil.rmtree(dst, ignore_errors=True)


# ---------------------------------------------------------------- c: 13B at MP=2, 48 GB per process, before/after


def step_c(step: Step, work: Path, args: argparse.Namespace) -> None:
    from llamakit.bench import BenchOptions, workload

    end = time.monotonic() + args.timeout_c  # the before row gets whatever the after row leaves of the step's time
    util = str(args.utilization)
    tiny = ["--preset", "tiny", "--device", "cpu", "--prompts", "6"] if args.dry else ["--preset", "13b"]
    r = step.run(llamakit("bench", *tiny, "--mp", "2", "--workload", "dataset", "--gpu-memory-utilization", util,
                          "--json"), args.timeout_c / 2)
    step.result["after"] = last_json(r.stdout) or {"rc": r.returncode}
    before = Path(args.before).resolve()
    if args.dry and not (before / "llamakit").is_dir():  # the CPU check extracts the tree the lead carries
        before = work / "before"
        shutil.rmtree(before, ignore_errors=True)
        before.mkdir(parents=True)
        subprocess.run(f"git -C {REPO} archive 6025c86 | tar -x -C {before}", shell=True, check=True)
    if not (before / "llamakit").is_dir():
        step.note(f"no 6025c86 tree at {before}: the before row is not measured")
        return
    prompts, gens = workload(BenchOptions(workload="dataset", prompts=6 if args.dry else 1024))
    spec = work / "before-spec.json"
    res = work / "before-result.json"
    slots, planned = args.before_slots, None
    for attempt in (1, 2, 3):  # the fixed-slot engine had no reserve for its CUDA graphs: 80 % of the slots on OOM
        res.unlink(missing_ok=True)
        for old in work.glob("before-error.rank*.json"):
            old.unlink()
        spec.write_text(json.dumps({"preset": "tiny" if args.dry else "13b", "mp": 2, "utilization": args.utilization,
                                    "device": "cpu" if args.dry else "cuda", "prompts": prompts, "gens": gens,
                                    "result": str(res), "errors": str(work / "before-error"), "slots": slots}))
        r = step.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                      "127.0.0.1", "--master_port", str(free_port()), str(Path(__file__).resolve()),
                      "--before-worker", str(spec)], end - time.monotonic(), cwd=before, pythonpath=str(before))
        errors = [json.loads(f.read_text()) for f in sorted(work.glob("before-error.rank*.json"))]
        tried = next((e["slots"] for e in errors if e["slots"]), None)
        planned = planned or tried
        if res.exists() or not any(e["oom"] for e in errors) or not tried or attempt == 3:
            break
        slots = max(1, int(tried * 0.8))
        step.note(f"the fixed-slot engine ran out of memory at {tried} slots; again at {slots}")
    if res.exists():
        step.result["before"] = json.loads(res.read_text())
        if attempt > 1:
            step.result["before"]["note"] = (f"out of memory at its own plan's {planned} slots; measured at "
                                             f"{step.result['before']['sequences_held']}")
    else:  # the summary says why too, not only the log
        step.result["before"] = {"rc": r.returncode, "attempts": attempt, "slots": tried,
                                 "errors": [f"rank {e['rank']}: {e['error']}" for e in errors]}


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def last_json(text: str) -> dict | None:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def before_worker(spec_path: str) -> None:
    """Runs under torchrun with the 6025c86 tree first on the path: its fixed-slot engine on the dataset workload,
    capped to `utilization` of each GPU, with the slots its own memory plan fits in the cap. A failure (imports
    included) prints one line naming the rank and the error, then the traceback, and leaves
    <errors>.rank<R>.json (error, whether out of memory, slots) for the retry and the summary."""
    spec = json.loads(Path(spec_path).read_text())
    rank = int(os.environ.get("RANK", 0))
    cuda = spec["device"] == "cuda"
    state: dict = {"slots": None}
    try:
        _before_run(spec, state)
        code = 0
    except Exception as e:  # imports included: the log must say why
        import traceback

        oom = type(e).__name__ == "OutOfMemoryError" or "out of memory" in str(e).lower()
        line = f"{type(e).__name__}: {e}".splitlines()[0][:400] if str(e) else type(e).__name__
        sys.stderr.write(f"before worker rank {rank} failed (slots {state['slots']}): {line}\n"
                         + traceback.format_exc())  # one write: the two ranks' lines do not interleave
        sys.stderr.flush()
        Path(f"{spec['errors']}.rank{rank}.json").write_text(json.dumps({"rank": rank, "error": line, "oom": oom,
                                                                          "slots": state["slots"]}))
        code = 1
    if cuda:  # NCCL inside captured CUDA graphs can hang the exit (6025c86's finish_and_exit): leave at once
        sys.stdout.flush()
        os._exit(code)
    sys.exit(code)


def _before_run(spec: dict, state: dict) -> None:
    import torch
    import torch.distributed as dist

    from llamakit.bench import BENCH_PRESETS, VOCAB, _engine, random_shard
    from llamakit.distributed import init_model_parallel
    from llamakit.engine.api import EngineConfig, Request
    from llamakit.engine.engine import DTYPES
    from llamakit.memory import max_batch_that_fits
    from llamakit.model.llama import Transformer

    cuda = spec["device"] == "cuda"
    local = int(os.environ.get("LOCAL_RANK", 0))
    if cuda:
        torch.cuda.set_device(local)  # before the cap and NCCL: both act on the current device
        torch.cuda.set_per_process_memory_fraction(spec["utilization"], local)
    dist.init_process_group("nccl" if cuda else "gloo")
    init_model_parallel(spec["mp"])
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    dtype_name = "bf16" if cuda else "fp32"
    cfg = BENCH_PRESETS[spec["preset"]].with_vocab(VOCAB)
    prompts, gens = spec["prompts"], spec["gens"]
    seq = max(len(p) for p in prompts) + max(gens)
    total = torch.cuda.get_device_properties(local).total_memory if cuda else 0
    cap = int(spec["utilization"] * total)
    slots = spec.get("slots") or (max(1, max_batch_that_fits(cfg, VOCAB, spec["mp"], dtype_name, seq, cap, cap=4096))
                                  if cuda else 8)
    slots = state["slots"] = min(slots, len(prompts))
    ecfg = EngineConfig(max_seq_len=seq, max_batch_size=slots, dtype=dtype_name, device=device.type,
                        temperature=0.6, top_p=0.9)
    dtype = DTYPES[dtype_name]
    model = Transformer.from_shard(cfg, random_shard(cfg, VOCAB, spec["mp"], dtype, device, 1234 + local), seq,
                                   dtype, device, "none")
    if cuda:
        torch.cuda.empty_cache()
    engine = _engine(model, ecfg, slots)
    list(engine.generate([Request(10_000 + i, p[:32], 8) for i, p in enumerate(prompts[:8])]))
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    tokens = sum(len(c.tokens) for c in engine.generate([Request(i, p, g) for i, (p, g) in
                                                           enumerate(zip(prompts, gens))]))
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    if dist.get_rank() == 0:
        Path(spec["result"]).write_text(json.dumps({
            "engine": "fixed slots (6025c86)", "preset": spec["preset"], "mp": spec["mp"], "workload": "dataset",
            "prompts": len(prompts), "max_seq_len": seq, "sequences_held": slots, "generated_tokens": tokens,
            "seconds": round(seconds, 3), "tokens_per_s": round(tokens / seconds, 1),
            "gpu_memory_utilization": spec["utilization"], "cap_gib": round(cap / 2**30, 2),
            "peak_gpu_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2) if cuda else None,
            "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__}))
    if not cuda:
        dist.destroy_process_group()


# ---------------------------------------------------------------- d: 65B int8 at MP=2


def step_d(step: Step, work: Path, args: argparse.Namespace) -> None:
    shape = ["--preset", "tiny", "--device", "cpu", "--prompts", "8", "--gen-len", "16"] if args.dry else \
        ["--preset", "65b"]
    r = step.run(llamakit("bench", *shape, "--mp", "2", "--quantize", "int8", "--json"), args.timeout_d)
    step.result = last_json(r.stdout) or {"rc": r.returncode,
                                          "workers_failed": "benchmark workers failed" in r.stdout,
                                          "last_line": (r.stdout.strip().splitlines() or [""])[-1][:300]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "x2-out"), help="where the 6 result files go ($OUT)")
    ap.add_argument("--work", default="/tmp/x2ev", help="scratch folder for checkpoints and outputs (removed)")
    ap.add_argument("--steps", default="a,b,c,d", help="which steps, e.g. a,b")
    ap.add_argument("--dry", action="store_true", help="tiny shapes on the CPU: checks the script end to end")
    ap.add_argument("--before", default=str(REPO / ".before"), help="the 6025c86 tree (fixed-slot engine)")
    ap.add_argument("--utilization", type=float, default=0.34, help="c: 48 GB of a 141 GB H200")
    ap.add_argument("--b-layers", type=int, default=12, help="b: layers of the 30B shape (of 60)")
    ap.add_argument("--b-batch-invariant", action="store_true",
                    help="b: both runs with batch_invariant: true (the resumed texts then equal bit for bit)")
    ap.add_argument("--before-slots", type=int, default=0,
                    help="c: KV-cache slots of the fixed-slot engine (0: what its own memory plan fits in the cap)")
    ap.add_argument("--timeout-a", type=float, default=200)
    ap.add_argument("--timeout-b", type=float, default=200)
    ap.add_argument("--timeout-c", type=float, default=240)
    ap.add_argument("--timeout-d", type=float, default=180)
    ap.add_argument("--budget", type=float, default=560, help="seconds for everything (the device allows 600)")
    ap.add_argument("--before-worker", metavar="SPEC", help=argparse.SUPPRESS)
    ap.add_argument("--write-ckpt", metavar="SPEC", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.before_worker:
        before_worker(args.before_worker)
        return
    if args.write_ckpt:
        _write_ckpt(args.write_ckpt)
        return
    DEADLINE[0] = time.monotonic() + args.budget
    if args.dry:  # a shared 2-core CPU is slower than two H200s even on tiny shapes
        args.timeout_a, args.timeout_b, args.timeout_c, args.timeout_d = (3 * t for t in (
            args.timeout_a, args.timeout_b, args.timeout_c, args.timeout_d))
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    summary: dict = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "dry": args.dry, "steps": {}}
    env = subprocess.run("nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; "
                         f"{sys.executable} -c 'import torch; print(\"torch\", torch.__version__)'; "
                         f"git -C {REPO} log --oneline -1", shell=True, capture_output=True, text=True)
    (out / "env.txt").write_text(env.stdout + env.stderr)
    for key in [s for s in args.steps.split(",") if s in STEPS]:
        step = Step(out, key, args.dry)
        t0 = time.monotonic()
        try:
            {"a": step_a, "b": step_b, "c": step_c, "d": step_d}[key](step, work, args)
        except Exception as e:  # one step's failure is recorded; the next step still runs
            step.note(f"step {key} failed: {type(e).__name__}: {e}")
            step.result["error"] = f"{type(e).__name__}: {e}"[:500]
        step.result["step_seconds"] = round(time.monotonic() - t0, 1)
        summary["steps"][NAMES[key]] = step.result
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
