"""Runs over two "nodes" on one machine: two `llamakit run --nnodes 2` processes (and, where `ip netns` is
permitted, each in its own network namespace with its own address), torchrun + gloo on CPU, real kill -9."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from llamakit.run.parts import part_files
from tests.helpers.netns import NetnsUnavailable, two_namespaces

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
N = 16
LEADS = ["Der Bürgermeister von Köln sagte am Montag, dass", "The weather service warned that the storm",
         "Die Schüler in München freuen sich über", "Scientists said on Friday that the new vaccine"]


@pytest.fixture(scope="module")
def world(tiny_factory, tmp_path_factory):
    """16 prompts, recipes for the tiny MP=1 and MP=2 checkpoints, and the HF oracle's greedy completions."""
    from llamakit.run.worker import completion_text
    from llamakit.tokenizer import Tokenizer, find_tokenizer
    from tests.helpers.hf_reference import build_hf_model, hf_greedy

    root = tmp_path_factory.mktemp("nodes")
    texts = [LEADS[i % len(LEADS)] + f" ({i})" for i in range(N)]
    (root / "prompts.jsonl").write_text("".join(json.dumps({"id": f"p-{i:02d}", "prompt": t}, ensure_ascii=False)
                                                + "\n" for i, t in enumerate(texts)), encoding="utf-8")
    expected = {}
    for mp in (1, 2):
        ckpt = tiny_factory("llama2", mp)
        tok = Tokenizer(find_tokenizer(ckpt))
        model = build_hf_model(ckpt)
        out = {}
        for i, t in enumerate(texts):
            ids = tok.encode(t)  # with bos, as the run encodes a plain prompt
            gen, _ = hf_greedy(model, ids, 8)
            out[f"p-{i:02d}"] = completion_text(tok, ids, gen)
        expected[mp] = out

    def recipe(name: str, mp: int) -> Path:
        body = {"ckpt_dir": str(tiny_factory("llama2", mp)), "prompt_path": str(root / "prompts.jsonl"),
                "out_path": str(root / f"{name}.jsonl"), "max_seq_len": 64, "max_gen_len": 8, "max_batch_size": 2,
                "temperature": 0, "device": "cpu"}
        p = root / f"{name}.yaml"
        p.write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in body.items()), encoding="utf-8")
        return p

    return root, recipe, expected


def env_for(root: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "LLAMAKIT_CACHE": str(root / "cache"), "COLUMNS": "200", **extra}


def start_node(root: Path, recipe: Path, rank: int, addr: str, port: int, *extra: str, prefix: list[str] = (),
               env: dict[str, str] | None = None) -> subprocess.Popen:
    cmd = [*prefix, sys.executable, "-m", "llamakit", "run", str(recipe), "--nnodes", "2", "--node-rank", str(rank),
           "--master-addr", addr, "--master-port", str(port), "--nproc", "1", *extra]
    return subprocess.Popen(cmd, cwd=root, env=env or env_for(root), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def free_port() -> int:
    from llamakit.run.plan import free_port as fp

    return fp()


def part_rows(out: Path) -> int:
    return sum(p.read_bytes().count(b"\n") for p in part_files(out))


def wait_rows(out: Path, procs: list[subprocess.Popen], rows: int = 3) -> None:
    deadline = time.monotonic() + 150
    while time.monotonic() < deadline:
        if part_rows(out) >= rows:
            return
        for p in procs:
            assert p.poll() is None, p.communicate()[1]
        time.sleep(0.05)
    raise AssertionError(f"no {rows} rows in the part files of {out} after 150 s")


def kill_node(p: subprocess.Popen) -> None:
    """A node dies: kill -9 its launcher, torchrun and workers at once (torchrun gives workers their own sessions)."""
    procs = [psutil.Process(p.pid), *psutil.Process(p.pid).children(recursive=True)]
    for q in procs:
        try:
            q.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=30)
    p.communicate(timeout=30)


def check_output(out: Path, expected: dict[str, str]) -> None:
    rows = [json.loads(x) for x in out.read_text(encoding="utf-8").splitlines()]
    assert [r["id"] for r in rows] == [f"p-{i:02d}" for i in range(N)]  # every prompt exactly once, input order
    assert {r["id"]: r["completion"] for r in rows} == expected  # greedy = the HF oracle
    assert part_files(out) == []


def test_mp2_split_over_two_nodes_a_killed_node_stops_the_other_and_the_rerun_resumes_once(world):
    root, recipe, expected = world
    r, out = recipe("mp2nodes", 2), root / "mp2nodes.jsonl"
    port = free_port()
    nodes = [start_node(root, r, i, "127.0.0.1", port, "--mp-across-nodes") for i in (0, 1)]
    wait_rows(out, nodes)
    kill_node(nodes[1])
    t0 = time.monotonic()
    _, err = nodes[0].communicate(timeout=60)
    assert time.monotonic() - t0 < 20, "the surviving node must stop within seconds"
    assert nodes[0].returncode == 2 and "Traceback" not in err
    assert "lost the connection to another node of this run" in err and "resume" in err
    assert not out.exists() and part_rows(out) >= 3
    # the re-run: in two network namespaces with their own addresses where permitted, else on 127.0.0.1
    try:
        with two_namespaces() as net:
            env = env_for(root, GLOO_SOCKET_IFNAME=net.ifname)
            nodes = [start_node(root, r, i, net.addrs[0], 29500, "--mp-across-nodes", prefix=net.prefix(i), env=env)
                     for i in (0, 1)]
            res = [p.communicate(timeout=240) for p in nodes]
    except NetnsUnavailable:
        port = free_port()
        nodes = [start_node(root, r, i, "127.0.0.1", port, "--mp-across-nodes") for i in (0, 1)]
        res = [p.communicate(timeout=240) for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], res
    assert "MP=2 x DP=1" in res[0][0] and "were already done (resumed)" in res[1][0]
    assert "16 prompts:" in res[0][0] and "node 1 of 2 is done" in res[1][0]
    check_output(out, expected[2])


def write_fake_slurm(bin_dir: Path) -> None:
    """srun: start the command once per node with SLURM_NODEID set, like one task per node, ending all when one
    fails (--kill-on-bad-exit); scontrol: the job's host names."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("""#!/bin/bash
while [[ $# -gt 0 && $1 == -* ]]; do shift; done
for ((i = 0; i < SLURM_NNODES; i++)); do SLURM_NODEID=$i SLURM_PROCID=$i "$@" & done
for ((i = 0; i < SLURM_NNODES; i++)); do  # --kill-on-bad-exit: the first task that fails ends the others
  wait -n || { rc=$?; kill $(jobs -p) 2>/dev/null; wait; exit $rc; }
done
""")
    (bin_dir / "scontrol").write_text("""#!/bin/bash
[[ $1 == show && $2 == hostnames ]] || exit 1
for ((i = 0; i < SLURM_NNODES; i++)); do echo localhost; done
""")
    for f in bin_dir.iterdir():
        f.chmod(f.stat().st_mode | stat.S_IEXEC)


def test_dp_over_two_nodes_with_part_files_after_a_kill_resumes_by_resubmitting_the_sbatch_script(world):
    root, recipe, expected = world
    r, out = recipe("dpnodes", 1), root / "dpnodes.jsonl"
    port = free_port()
    nodes = [start_node(root, r, i, "127.0.0.1", port) for i in (0, 1)]
    wait_rows(out, nodes)
    kill_node(nodes[0])  # the node that hosts the rendezvous
    _, err = nodes[1].communicate(timeout=60)
    assert nodes[1].returncode == 2 and "lost the connection to another node" in err
    assert len(part_files(out)) == 2 or part_rows(out) >= 3
    # re-submit: the script `llamakit run --sbatch` prints, under a fake srun/scontrol that start both nodes here
    made = subprocess.run([sys.executable, "-m", "llamakit", "run", str(r), "--sbatch", "--nodes", "2",
                           "--gpus-per-node", "0", "--nproc", "1"], cwd=root, env=env_for(root), capture_output=True,
                          text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    script = root / "dp.sbatch"
    script.write_text(made.stdout, encoding="utf-8")
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
    write_fake_slurm(root / "bin")
    env = env_for(root, PATH=f"{root / 'bin'}:{os.environ['PATH']}", SLURM_JOB_NODELIST="node[01-02]",
                  SLURM_NNODES="2", SLURM_JOB_ID=str(port % 20000), SLURM_CPUS_PER_TASK="1")
    job = subprocess.run(["bash", str(script)], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert job.returncode == 0, job.stdout + job.stderr
    assert "MP=1 x DP=2" in job.stdout and "were already done (resumed)" in job.stdout
    check_output(out, expected[1])


def test_array_shares_run_alone_and_llamakit_merge_puts_them_in_input_order(world):
    root, recipe, expected = world
    r, out = recipe("shares", 1), root / "shares.jsonl"
    cmd = [sys.executable, "-m", "llamakit", "run", str(r), "--share"]
    tasks = [subprocess.Popen([*cmd, f"{k}/2"], cwd=root, env=env_for(root), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for k in (0, 1)]
    res = [p.communicate(timeout=240) for p in tasks]
    assert [p.returncode for p in tasks] == [0, 0], res
    assert "share 1 of 2 is complete" in res[1][0] and f"llamakit merge {out}" in res[1][0]
    assert not out.exists() and [p.name for p in part_files(out)] == ["shares.jsonl.part-s00of02-r000",
                                                                      "shares.jsonl.part-s01of02-r000"]
    merged = subprocess.run([sys.executable, "-m", "llamakit", "merge", str(out)], cwd=root, env=env_for(root),
                            capture_output=True, text=True, timeout=60)
    assert merged.returncode == 0, merged.stderr
    check_output(out, expected[1])
