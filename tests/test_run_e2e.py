"""`llamakit run` for real: torchrun + gloo on CPU, MP=2 and DP=2, kill -9 + resume, a failing rank, skip policy."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llamakit.errors import LlamakitError
from llamakit.run.plan import plan_run
from llamakit.run.resume import RunLock
from llamakit.run.supervise import execute

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N = 60
LONG = {7, 33}  # prompts longer than max_seq_len - max_gen_len: truncated (on_long_prompt: truncate)
LEADS = ["Der Bürgermeister von Köln sagte am Montag, dass", "The weather service warned that the storm",
         "Die Schüler in München freuen sich über", "Scientists said on Friday that the new vaccine",
         "Nach dem Spiel äußerte sich der Trainer über"]


def prompt_line(i: int) -> str:
    text = LEADS[i % len(LEADS)] + f" ({i})"
    if i in LONG:
        text = " ".join([text] * 8)
    return json.dumps({"id": f"p-{i:03d}", "prompt": text, "ressort": "Politik" if i % 2 else "Wissen", "n": i},
                      ensure_ascii=False)


@pytest.fixture(scope="module")
def world(tiny_factory, tmp_path_factory):
    """A working folder with 60 prompts and a recipe writer for the tiny MP=1 / MP=2 checkpoints (CPU, gloo)."""
    root = tmp_path_factory.mktemp("run")
    (root / "prompts.jsonl").write_text("".join(prompt_line(i) + "\n" for i in range(N)), encoding="utf-8")

    def recipe(name: str, mp: int = 1, **keys: object) -> Path:
        body = {"ckpt_dir": str(tiny_factory("llama2", mp)), "prompt_path": str(root / "prompts.jsonl"),
                "out_path": str(root / f"{name}.jsonl"), "max_seq_len": 96, "max_gen_len": 12, "max_batch_size": 4,
                "temperature": 0, "on_long_prompt": "truncate", "device": "cpu", **keys}
        p = root / f"{name}.yaml"
        p.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items()), encoding="utf-8")
        return p

    return root, recipe


def env_for(root: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "LLAMAKIT_CACHE": str(root / "cache"), "COLUMNS": "200"}


def run_cli(root: Path, *args: str, timeout: float = 150) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "llamakit", "run", *args], cwd=root, env=env_for(root),
                          capture_output=True, text=True, timeout=timeout)


def rows_of(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def texts(rows: list[dict]) -> dict[str, str]:
    return {r["id"]: r["completion"] for r in rows}


@pytest.fixture(scope="module")
def reference(world):
    """An uninterrupted MP=1 run (greedy); the other runs must reproduce its completions."""
    root, recipe = world
    res = run_cli(root, str(recipe("ref")))
    assert res.returncode == 0, res.stderr + (root / "ref.log").read_text()
    return res, rows_of(root / "ref.jsonl")


def test_run_writes_every_prompt_once_in_input_order(world, reference):
    root, _ = world
    res, rows = reference
    assert [r["id"] for r in rows] == [f"p-{i:03d}" for i in range(N)]
    for i, r in enumerate(rows):
        assert list(r)[:6] == ["id", "prompt", "completion", "prompt_tokens", "completion_tokens", "finish_reason"]
        assert r["prompt"] == json.loads(prompt_line(i))["prompt"] and (r["ressort"], r["n"]) in [("Politik", i),
                                                                                                ("Wissen", i)]
        assert r["finish_reason"] in ("stop", "length") and 0 <= r["completion_tokens"] <= 12
        assert r.get("truncated", False) == (i in LONG) and (r["prompt_tokens"] == 84) == (i in LONG)
    assert "Bürgermeister" in (root / "ref.jsonl").read_text(encoding="utf-8")  # umlauts written as they are
    # after success the run folder keeps only its lock, the settings the output was made with and its status
    assert sorted(p.name for p in (root / ".ref.jsonl.llamakit").iterdir()) == ["lock", "plan.json", "status.json"]
    assert f"{N} prompts: {N} generated now, 0 were already in the output" in res.stdout
    assert "Traceback" not in res.stdout + res.stderr and "torch.distributed" not in res.stderr
    log = (root / "ref.log").read_text(encoding="utf-8")
    assert "plan: parallelism  MP=1 x DP=1" in log and "rank 0" in log and "summary:" in log


def test_rerun_of_a_finished_run_generates_nothing(world, reference):
    root, recipe = world
    before = (root / "ref.jsonl").read_bytes()
    res = run_cli(root, str(recipe("ref")))
    assert res.returncode == 0, res.stderr
    assert f"0 generated now, {N} were already in the output" in res.stdout
    assert (root / "ref.jsonl").read_bytes() == before
    res = run_cli(root, str(recipe("ref")), "--set", "temperature=0.7")  # new settings, same finished output
    assert res.returncode == 2 and "complete and was written with other settings (temperature 0.0 -> 0.7)" in res.stderr
    assert (root / "ref.jsonl").read_bytes() == before
    # an output finished without a recorded plan (an older llamakit): a no-op run must not record its own settings
    import shutil

    shutil.rmtree(root / ".ref.jsonl.llamakit")
    res = run_cli(root, str(recipe("ref")), "--set", "temperature=0.7")
    assert res.returncode == 0 and "0 generated now" in res.stdout
    assert not (root / ".ref.jsonl.llamakit" / "plan.json").exists()
    assert run_cli(root, str(recipe("ref"))).returncode == 0 and (root / "ref.jsonl").read_bytes() == before


def test_two_cpu_replicas_split_the_prompts_into_one_file(world, reference):
    root, recipe = world
    res = run_cli(root, str(recipe("dp2")), "--nproc", "2")
    assert res.returncode == 0, res.stderr + (root / "dp2.log").read_text()
    log = (root / "dp2.log").read_text()
    assert "MP=1 x DP=2" in log and "data-parallel replica 1 of 2" in log and "30 prompts for this replica" in log
    rows = rows_of(root / "dp2.jsonl")
    assert [r["id"] for r in rows] == [r["id"] for r in reference[1]]
    assert texts(rows) == texts(reference[1])


def _kill_everything(parent: subprocess.Popen) -> None:
    """kill -9 the launcher's process group and every descendant (torchrun puts workers in their own sessions)."""
    procs = [psutil.Process(parent.pid)]
    procs += procs[0].children(recursive=True)
    os.killpg(parent.pid, signal.SIGKILL)
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    parent.wait(timeout=30)


def sigint_default() -> None:
    """Ctrl-C as in a terminal, also when the test runs in a background job (which inherits SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start_until_rows(root: Path, r: Path, out: Path, pipe: int, rows: int = 4) -> subprocess.Popen:
    """Start `llamakit run r` in its own process group; return once `rows` rows are in the output."""
    proc = subprocess.Popen([sys.executable, "-m", "llamakit", "run", str(r)], cwd=root, env=env_for(root),
                            stdout=pipe, stderr=pipe, text=True, start_new_session=True, preexec_fn=sigint_default)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if out.exists() and out.read_bytes().count(b"\n") >= rows:
            return proc
        assert proc.poll() is None, "the run ended before it could be stopped"
        time.sleep(0.05)
    raise AssertionError(f"no {rows} rows in {out} after 120 s")


def test_kill_9_then_resume_loses_and_repeats_nothing(world, reference):
    root, recipe = world
    r = recipe("killed")
    out = root / "killed.jsonl"
    proc = _start_until_rows(root, r, out, subprocess.DEVNULL)
    _kill_everything(proc)
    first = rows_of(out) if out.read_bytes().endswith(b"\n") else []
    assert 4 <= len(first) < N if first else True
    with open(out, "ab") as f:  # and a row torn in half, as a kill in the middle of a write would leave it
        f.write(json.dumps(reference[1][-1], ensure_ascii=False).encode()[:40])
    res = run_cli(root, str(r))
    assert res.returncode == 0, res.stderr + (root / "killed.log").read_text()
    assert "were already in the output (resumed)" in res.stdout
    assert "repaired the output: cut a torn last line" in (root / "killed.log").read_text()
    rows = rows_of(out)
    assert [x["id"] for x in rows] == [f"p-{i:03d}" for i in range(N)]  # every id exactly once, in order
    assert rows == reference[1]


@pytest.fixture(scope="module")
def mp2_ctrl_c(world):
    """An MP=2 run stopped by Ctrl-C after 4 rows, then re-run to the end: (the stopped launcher's exit code and
    stderr, its log, the re-run). SIGINT goes to the whole process group, as a terminal's Ctrl-C sends it: launcher,
    torchrun and both MP ranks. Both the Ctrl-C test and the MP=2 test read it (one MP=2 run, not two)."""
    root, recipe = world
    r = recipe("ctrlc", mp=2)
    proc = _start_until_rows(root, r, root / "ctrlc.jsonl", subprocess.PIPE)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    stopped_log = (root / "ctrlc.log").read_text()
    return proc.returncode, err, stopped_log, run_cli(root, str(r))


def test_mp2_on_cpu_over_gloo_gives_the_same_greedy_completions(world, reference, mp2_ctrl_c):
    """The MP=2 run (stopped once by Ctrl-C and resumed, both parts at MP=2) writes MP=1's greedy completions."""
    root, _ = world
    res = mp2_ctrl_c[3]
    assert res.returncode == 0, res.stderr + (root / "ctrlc.log").read_text()
    assert "MP=2 x DP=1" in (root / "ctrlc.log").read_text()
    assert texts(rows_of(root / "ctrlc.jsonl")) == texts(reference[1])


def test_ctrl_c_stops_with_one_line_and_resume_completes(world, reference, mp2_ctrl_c):
    root, _ = world
    rc, err, log, res = mp2_ctrl_c
    assert rc == 2
    assert "interrupted (Ctrl-C); the rows written so far are kept" in err and "re-run" in err
    assert "Traceback" not in err and err.strip().count("\n") == 0  # one line on the terminal
    assert "KeyboardInterrupt" not in log  # the workers' own stop is not reported as a crash
    assert res.returncode == 0, res.stderr + log
    assert "were already in the output (resumed)" in res.stdout
    assert rows_of(root / "ctrlc.jsonl") == reference[1]


def test_a_worker_stopped_by_sigint_reports_a_stop_not_a_crash(world, caplog):
    # the worker side of Ctrl-C, directly: whether a worker sees SIGINT before torchrun's SIGTERM is a race
    import logging

    from llamakit.run.worker import report_error

    root, recipe = world
    setup = plan_run(recipe("sigint"), gpu_facts=([], False))
    Path(setup.plan.run_dir).mkdir()
    with caplog.at_level(logging.INFO, logger="llamakit"):
        report_error(setup.plan, 1, KeyboardInterrupt())
    entry = json.loads((Path(setup.plan.run_dir) / "error.rank1.json").read_text())
    assert entry["what"].startswith("stopped by SIGINT") and entry["fix"] == "re-run the same command to resume"
    assert [r.levelname for r in caplog.records] == ["WARNING"] and "Traceback" not in caplog.text
    caplog.clear()
    # a GPU out of memory (a crash, traceback in the log) names the smaller batch to resume with
    try:
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
    except RuntimeError as e:
        oom = e
    with caplog.at_level(logging.INFO, logger="llamakit"):
        report_error(setup.plan, 0, oom)
    entry = json.loads((Path(setup.plan.run_dir) / "error.rank0.json").read_text())
    assert entry["what"].startswith("RuntimeError: CUDA out of memory") and "--set max_batch_size=2" in entry["fix"]
    assert [r.levelname for r in caplog.records] == ["ERROR"] and "Traceback" in caplog.text


def test_a_failing_rank_stops_the_run_with_its_error_once(world, capfd):
    root, recipe = world
    setup = plan_run(recipe("fails", mp=2), gpu_facts=([], False))
    Path(setup.plan.out_path).mkdir()  # rank 0 (the writer) cannot open its output; rank 1 is brought down
    t0 = time.monotonic()
    with pytest.raises(LlamakitError) as e:
        execute(setup)
    assert time.monotonic() - t0 < 60
    msg = e.value.one_line()
    assert msg.startswith("rank 0: IsADirectoryError") and "re-run to resume" in msg and "\n" not in msg
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # torchrun's and the workers' output went to the log
    log = Path(setup.plan.log_path).read_text()
    assert log.count("Traceback") >= 1 and "rank 0 failed: IsADirectoryError" in log


def test_skip_policy_records_skipped_rows_without_starting_workers(world):
    root, recipe = world
    (root / "long.jsonl").write_text("".join(prompt_line(i) + "\n" for i in sorted(LONG)), encoding="utf-8")
    setup = plan_run(recipe("skipped", on_long_prompt="skip", prompt_path=str(root / "long.jsonl")),
                     gpu_facts=([], False))
    assert setup.plan.pending == 0 and setup.plan.long_prompts == 2
    summary = execute(setup)
    rows = rows_of(root / "skipped.jsonl")
    assert [(r["id"], r["finish_reason"], r["completion"], r["completion_tokens"]) for r in rows] == [
        ("p-007", "skipped", "", 0), ("p-033", "skipped", "", 0)]
    assert summary.skipped == 2 and summary.generated == 0 and rows[0]["prompt_tokens"] > 84


def test_a_second_run_on_the_same_output_is_refused(tmp_path):
    out = tmp_path / "out.jsonl"
    run_dir = tmp_path / ".out.jsonl.llamakit"
    with RunLock(run_dir, out):
        with pytest.raises(LlamakitError, match="another llamakit run"):
            RunLock(run_dir, out).__enter__()
    fd = os.open(run_dir / "writers.lock", os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_SH)  # a worker of a killed run still holding the file
    try:
        with pytest.raises(LlamakitError, match="still writing"):
            RunLock(run_dir, out).__enter__()
    finally:
        os.close(fd)
    with RunLock(run_dir, out):
        pass
