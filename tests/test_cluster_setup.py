"""The sbatch script and doctor's network rules: what a user copies to a SLURM cluster, checked here without one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from llamakit.doctor.network import NetFacts, gather_network, nccl_pick, rule_network, rule_rendezvous, table
from llamakit.errors import LlamakitError
from llamakit.run.sbatch import SbatchSpec, check_spec, sbatch_script

IFACES = {"lo": ["127.0.0.1"], "docker0": ["172.17.0.1"], "eno1": ["10.0.0.5"], "ib0": ["192.168.10.5"]}


def bash_n(text: str, tmp_path: Path) -> None:
    script = tmp_path / "job.sbatch"
    script.write_text(text, encoding="utf-8")
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_single_node_script_runs_the_recipe_directly_and_passes_bash_n(tmp_path):
    text = sbatch_script(SbatchSpec(Path("/home/u/my run.yaml"), ["--set", "max_batch_size=8"], gpus_per_node=2,
                                    partition="gpu", time="1-00:00:00", python="/opt/venv/bin/python",
                                    workdir=Path("/home/u")))
    bash_n(text, tmp_path)
    sb = [line for line in text.splitlines() if line.startswith("#SBATCH")]
    assert sb == ["#SBATCH --job-name=llamakit-my run", "#SBATCH --nodes=1", "#SBATCH --ntasks-per-node=1",
                  "#SBATCH --cpus-per-task=8", "#SBATCH --gpus-per-node=2", "#SBATCH --partition=gpu",
                  "#SBATCH --time=1-00:00:00", "#SBATCH --output=llamakit-my run-%j.out"]
    assert "exec /opt/venv/bin/python -m llamakit run '/home/u/my run.yaml' --set max_batch_size=8" in text
    assert "srun" not in text and "--nnodes" not in text and "submit the\n# same file again" in text


def test_multi_node_script_puts_the_rendezvous_on_the_first_node_and_explains_the_interfaces(tmp_path):
    text = sbatch_script(SbatchSpec(Path("/r.yaml"), [], nodes=4, gpus_per_node=2))
    bash_n(text, tmp_path)
    assert "#SBATCH --nodes=4" in text
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST" | sed -n 1p' in text
    assert "NCCL_SOCKET_IFNAME" in text and "GLOO_SOCKET_IFNAME" in text
    assert '--node-rank "$SLURM_NODEID" --master-addr "$MASTER_ADDR"' in text and "--kill-on-bad-exit=1" in text


def test_array_mode_gives_each_task_its_share_and_says_how_to_merge(tmp_path):
    text = sbatch_script(SbatchSpec(Path("/r.yaml"), [], nodes=8, gpus_per_node=1, array=True,
                                    out_path=Path("/data/out.jsonl")))
    bash_n(text, tmp_path)
    assert "#SBATCH --array=0-7" in text and "#SBATCH --nodes=1" in text
    assert '--share "$SLURM_ARRAY_TASK_ID/8"' in text and "llamakit merge /data/out.jsonl" in text
    assert "--master-addr" not in text


def test_a_model_parallel_group_split_across_nodes_is_refused_with_the_fix():
    with pytest.raises(LlamakitError, match="MP=2.*--gpus-per-node 1") as e:
        check_spec(SbatchSpec(Path("/r.yaml"), [], nodes=2, gpus_per_node=1), 2)
    assert "--mp-across-nodes" in e.value.fix and "Ethernet" in e.value.fix
    check_spec(SbatchSpec(Path("/r.yaml"), [], nodes=2, gpus_per_node=1, mp_across_nodes=True), 2)
    check_spec(SbatchSpec(Path("/r.yaml"), [], nodes=2, gpus_per_node=0), 2)  # CPU: processes, not GPUs


# ---------------------------------------------------------------- doctor: network rules (pure) and facts (real)


def test_nccl_picks_infiniband_first_then_skips_docker_and_loopback():
    rules = table()["nccl"]
    assert nccl_pick(IFACES, None, rules) == "ib0"
    assert nccl_pick({k: v for k, v in IFACES.items() if k != "ib0"}, None, rules) == "eno1"
    assert nccl_pick(IFACES, "eno", rules) == "eno1" and nccl_pick(IFACES, "^ib,lo,docker", rules) == "eno1"
    assert nccl_pick(IFACES, "=eth0", rules) is None


def test_network_rule_warns_when_the_route_to_the_rendezvous_leaves_by_another_interface():
    nf = NetFacts(interfaces=IFACES, hostname="n1", hostname_addr="10.0.0.5", master_addr="n0",
                  master_ip="10.0.0.4", route_addr="10.0.0.5")
    res = rule_network(nf)
    assert res.status == "warn" and "NCCL ib0" in res.finding and "NCCL_SOCKET_IFNAME=eno1" in res.fix
    nf.nccl_ifname = "eno1"
    assert rule_network(nf).status == "ok"
    nf.nccl_ifname = "eth9"
    assert rule_network(nf).status == "fail"


def test_network_rule_warns_when_gloo_would_listen_on_the_loopback():
    nf = NetFacts(interfaces=IFACES, hostname="n1", hostname_addr="127.0.1.1")
    res = rule_network(nf)
    assert res.status == "ok" and "right for one machine" in res.finding and "GLOO_SOCKET_IFNAME" in res.fix
    nf.master_addr, nf.master_ip, nf.master_is_local = "n1", "10.0.0.5", True  # about to host a multi-node run
    assert rule_network(nf).status == "warn"


@pytest.mark.parametrize("facts, status, words", [
    (dict(master_addr=None), "skip", "no --master-addr"),
    (dict(master_addr="nodex", master_ip=None, resolve_error="Name or service not known"), "fail", "does not resolve"),
    (dict(master_addr="localhost", master_ip="127.0.0.1", master_is_local=True), "warn", "loopback"),
    (dict(master_addr="login1", master_ip="10.0.0.1", master_is_local=True, slurm_present=True), "warn",
     "login node"),
    (dict(master_addr="n0", master_ip="10.0.0.1", master_is_local=True, local_port_busy=True, slurm_job="7"), "warn",
     "in use"),
    (dict(master_addr="n0", master_ip="10.0.0.4", connect="refused"), "ok", "nothing listens"),
    (dict(master_addr="n0", master_ip="10.0.0.4", connect="timeout"), "fail", "firewall"),
])
def test_rendezvous_rule_names_each_failure_mode(facts, status, words):
    res = rule_rendezvous(NetFacts(interfaces=IFACES, **facts))
    assert res.status == status and words in res.finding


def test_rendezvous_facts_on_this_host_see_a_listening_port_and_a_busy_one():
    import socket

    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        nf = gather_network("127.0.0.1", port)
        assert nf.master_ip == "127.0.0.1" and nf.connect == "open" and nf.master_is_local and nf.local_port_busy
    assert gather_network("no-such-host.invalid", 1).master_ip is None
