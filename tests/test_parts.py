"""Part files, `llamakit merge` and the multi-node launch flags: pure, in-process, no torch.distributed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llamakit.errors import LlamakitError
from llamakit.run.merge import merge_output
from llamakit.run.nodes import Nodes, check_layout, make_nodes, parse_share, torchrun_node_args
from llamakit.run.parts import PartWriter, check_parts, done_keys, merge_parts, part_files, part_path

REPO = Path(__file__).resolve().parents[1]


def row(i: int) -> dict:
    return {"id": f"p{i}", "prompt": f"text {i}", "completion": f" out {i}", "prompt_tokens": 3,
            "completion_tokens": 2, "finish_reason": "length"}


def ids(path: Path) -> list[str]:
    return [json.loads(x)["id"] for x in path.read_text(encoding="utf-8").splitlines()]


def test_each_replica_appends_to_its_own_part_and_a_torn_tail_is_cut_by_its_next_writer(tmp_path):
    out = tmp_path / "gen.jsonl"
    with PartWriter(part_path(out, 0)) as w:
        w.write(row(0))
        w.write(row(2))
    with open(part_path(out, 0), "ab") as f:
        f.write(b'{"id": "p4", "prom')  # a kill in the middle of a row
    with PartWriter(part_path(out, 1)) as w:
        w.write(row(1))
    assert done_keys(out) == {'"p0"', '"p2"', '"p1"'}  # the torn row does not count as done
    w = PartWriter(part_path(out, 0))
    assert w.cut == len(b'{"id": "p4", "prom')
    w.write(row(4))
    w.close()
    assert ids(part_path(out, 0)) == ["p0", "p2", "p4"]
    assert [p.name for p in part_files(out)] == ["gen.jsonl.part-r000", "gen.jsonl.part-r001"]


def test_merge_writes_input_order_each_id_once_and_removes_the_parts(tmp_path):
    out = tmp_path / "gen.jsonl"
    out.write_text(json.dumps(row(3)) + "\n", encoding="utf-8")  # rows of an earlier merge or single-node run
    with PartWriter(part_path(out, 1, (0, 2))) as w:
        for i in (4, 0, 3):  # 3 again: a kill after the rename of an earlier merge left its part behind
            w.write(row(i))
    with PartWriter(part_path(out, 0, (1, 2))) as w:
        for i in (5, 1, 2):
            w.write(row(i))
    order = [f"p{i}" for i in range(6)]
    rep = check_parts(out, order)
    assert (rep.rows, rep.duplicates, rep.missing) == (6, 1, [])
    assert merge_parts(out, order) == 6
    assert ids(out) == order and part_files(out) == []
    assert merge_parts(out, order) == 6 and ids(out) == order  # merging again changes nothing


def test_merge_refuses_an_incomplete_output_unless_partial(tmp_path):
    out = tmp_path / "gen.jsonl"
    with PartWriter(part_path(out, 0)) as w:
        w.write(row(1))
    with pytest.raises(LlamakitError, match="1 of 2 prompts have no row yet.*--partial"):
        merge_parts(out, ["p0", "p1"])
    assert part_files(out)  # nothing was touched
    assert merge_parts(out, ["p0", "p1"], require_complete=False) == 1 and ids(out) == ["p1"]


def test_llamakit_merge_finds_the_prompt_file_in_the_runs_plan_and_reports_missing_prompts(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"text {i}"}) + "\n" for i in range(4)),
                       encoding="utf-8")
    out = tmp_path / "gen.jsonl"
    run_dir = tmp_path / ".gen.jsonl.llamakit" / "share-01of02"
    run_dir.mkdir(parents=True)
    (run_dir / "plan.json").write_text(json.dumps({"prompt_path": str(prompts)}), encoding="utf-8")
    for k, keys in ((0, (0, 2)), (1, (3,))):
        with PartWriter(part_path(out, 0, (k, 2))) as w:
            for i in keys:
                w.write(row(i))
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "200"}
    cli = [sys.executable, "-m", "llamakit", "merge", str(out)]
    res = subprocess.run(cli + ["--check"], env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "1 prompts without a row" in res.stdout and '"p1"' in res.stdout
    res = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr
    assert "1 of 4 prompts have no row yet" in res.stderr
    with PartWriter(part_path(out, 1, (1, 2))) as w:
        w.write(row(1))
    res = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert ids(out) == ["p0", "p1", "p2", "p3"] and part_files(out) == []


def test_merge_without_a_recorded_plan_asks_for_the_prompt_file(tmp_path):
    out = tmp_path / "gen.jsonl"
    with PartWriter(part_path(out, 0)) as w:
        w.write(row(0))
    with pytest.raises(LlamakitError, match="--prompts"):
        merge_output(out)


# ---------------------------------------------------------------- launch flags (torchrun's words)


def test_single_node_flags_give_the_same_torchrun_command_as_before():
    assert not make_nodes().multi
    assert torchrun_node_args(Nodes(), 2, 12345) == ["--nnodes", "1", "--nproc_per_node", "2", "--master_addr",
                                                     "127.0.0.1", "--master_port", "12345"]


def test_static_and_c10d_rendezvous_become_torchruns_own_flags():
    n = make_nodes(2, 1, "node01", 29400)
    assert torchrun_node_args(n, 4, 0)[-6:] == ["--node-rank", "1", "--master-addr", "node01", "--master-port",
                                                "29400"]
    c = make_nodes(2, rdzv_endpoint="node01:29400", rdzv_id="job7")
    assert c.node_rank is None and c.is_merger is None
    assert torchrun_node_args(c, 1, 0)[-6:] == ["--rdzv-backend", "c10d", "--rdzv-endpoint", "node01:29400",
                                                "--rdzv-id", "job7"]


@pytest.mark.parametrize("kwargs, flag", [
    ({"nnodes": 2}, "--nnodes"),  # no rendezvous named
    ({"nnodes": 2, "master_addr": "h"}, "--node-rank"),
    ({"nnodes": 2, "node_rank": 2, "master_addr": "h"}, "--node-rank"),
    ({"nnodes": 2, "master_addr": "h", "node_rank": 0, "rdzv_endpoint": "h:1"}, "--rdzv-endpoint"),
    ({"nnodes": 2, "rdzv_endpoint": "h:1"}, "--rdzv-id"),
    ({"nnodes": 2, "rdzv_endpoint": "h"}, "--rdzv-endpoint"),
    ({"master_addr": "h"}, "--nnodes"),
    ({"nnodes": 2, "master_addr": "h", "node_rank": 0, "share": "0/2"}, "--share"),
])
def test_inconsistent_launch_flags_name_the_flag_and_the_fix(kwargs, flag):
    with pytest.raises(LlamakitError) as e:
        make_nodes(**kwargs)
    assert e.value.where == flag and e.value.fix


def test_share_is_k_of_n():
    assert parse_share("3/8") == (3, 8)
    for bad in ("8/8", "x", "1/0"):
        with pytest.raises(LlamakitError, match="K/N"):
            parse_share(bad)


def test_a_model_parallel_group_never_spans_nodes_unless_asked():
    two = make_nodes(2, 0, "h", 1)
    assert check_layout(2, 2, two) == 2  # MP=2 inside each node, DP=2 across
    with pytest.raises(LlamakitError, match="span nodes.*slow over Ethernet") as e:
        check_layout(2, 1, two)
    assert "--mp-across-nodes" in e.value.fix
    assert check_layout(2, 1, make_nodes(2, 0, "h", 1, mp_across_nodes=True)) == 1
    with pytest.raises(LlamakitError, match="not a multiple"):
        check_layout(4, 1, make_nodes(3, 0, "h", 1, mp_across_nodes=True))


def test_node_0_must_be_the_rendezvous_host_and_its_port_free():
    import socket

    from llamakit.run.nodes import check_rendezvous_host

    check_rendezvous_host(make_nodes(2, 1, "127.0.0.1", 1))  # other nodes only need the name to resolve
    with pytest.raises(LlamakitError, match="does not resolve"):
        check_rendezvous_host(make_nodes(2, 1, "no-such-host.invalid", 29500))
    with pytest.raises(LlamakitError, match="is not this machine") as e:
        check_rendezvous_host(make_nodes(2, 0, "198.51.100.77", 29500))  # TEST-NET-2: not a local address
    assert "login node" in e.value.fix
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(LlamakitError, match=f"port {port} on 127.0.0.1 is in use") as e:
            check_rendezvous_host(make_nodes(2, 0, "127.0.0.1", port))
        assert e.value.where == "--master-port"


def test_nodes_that_planned_differently_are_told_which_setting_differs():
    from llamakit.run.nodewatch import differences, is_lost_peer

    a = {"host": "n0", "mp": 2, "dp": 1, "pending": 30, "engine": {"temperature": 0.0}}
    b = {**a, "host": "n1", "pending": 28, "engine": {"temperature": 0.7}}
    assert differences(a, a | {"host": "n1"}) == []
    assert differences(a, b) == ["pending 30 vs 28", "engine {'temperature': 0.0} vs {'temperature': 0.7}"]
    assert is_lost_peer(RuntimeError("[pair.cc:537] Read error [127.0.0.1]:2785: Connection reset by peer"))
    assert not is_lost_peer(RuntimeError("CUDA out of memory"))


def test_a_node_whose_workers_never_join_the_others_is_told_why_after_a_while(tmp_path):
    from types import SimpleNamespace

    from llamakit.run.supervise import _ConnectWatch

    log = tmp_path / "run.log"
    log.write_text("earlier run: model-parallel rank 0 of 1\n", encoding="utf-8")  # before this run: not counted
    plan = SimpleNamespace(log_path=str(log), nodes={"master_addr": "node01"})
    w = _ConnectWatch(plan, hint_after_s=5)
    assert w.phase(1.0) == "loading"
    assert w.phase(6.0) == "waiting for the other nodes (see the log)" and w.warned
    with open(log, "a", encoding="utf-8") as f:
        f.write("rank 1    model-parallel rank 0 of 2, data-parallel replica 0 of 1\n")
    assert w.phase(7.0) == "loading" and w.joined


def test_status_of_a_stopped_multinode_run_counts_the_rows_in_its_part_files(tmp_path):
    """A run stopped with rows only in part files (several nodes) is not reported as having done nothing."""
    from llamakit.run.status import run_status

    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "a", "completion": "x"}) + "\n")
    part_path(out, 0).write_text(json.dumps({"id": "b", "completion": "y"}) + "\n")
    part_path(out, 1).write_text(json.dumps({"id": "c", "completion": "z"}) + "\n" + '{"id": "d", "compl')
    st = run_status(out)
    assert (st.state, st.done) == ("stopped", 3)
