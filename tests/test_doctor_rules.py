"""Doctor's pure rules fed with planted facts: each names the fault, its verdict and the fix it must print."""

from __future__ import annotations

import dataclasses

import pytest

from llamakit.checkpoint.params import ModelConfig
from llamakit.doctor import rules as R
from llamakit.doctor.checks import BY_NAME, CHECKS, apply_rule
from llamakit.doctor.facts import AllreduceResult, CkptFact, Facts, MatmulResult, RecipeFact
from llamakit.doctor.network import NetFacts
from llamakit.gpus import GpuInfo

GiB = 1024**3
A6000 = 51_527_024_640  # what NVML reports for an RTX A6000
LLAMA_13B = ModelConfig(dim=5120, n_layers=40, n_heads=40, vocab_size=-1, multiple_of=256, norm_eps=1e-6)
LLAMA_7B = ModelConfig(dim=4096, n_layers=32, n_heads=32, vocab_size=-1, multiple_of=256, norm_eps=1e-6)


def a6000(i: int) -> GpuInfo:
    return GpuInfo(i, "NVIDIA RTX A6000", A6000, A6000 - GiB, (8, 6))


def server(**kw) -> Facts:
    """The lab's healthy server: 2 x RTX A6000, driver 550, torch cu124 with sm_86 kernels."""
    base = dict(python_version="3.11.7", os_name="Ubuntu 22.04", env_kind="conda", env_name="llama",
                versions={"llamakit": "0.1.0", "torch": "2.6.0+cu124", "fairscale": "0.4.13",
                          "sentencepiece": "0.2.0", "nvidia-ml-py": "12.560.30"},
                torch_version="2.6.0+cu124", torch_cuda="12.4",
                torch_arch_list=["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"],
                dist_available=True, nccl_available=True, gloo_available=True, nccl_version="2.21.5",
                nvml_ok=True, driver_version="550.54.14", driver_cuda="12.4", nvidia_present=True,
                gpus=[a6000(0), a6000(1)], gpus_total=2, p2p={"0-1": True}, shm_bytes=64 * GiB,
                shm_free_bytes=64 * GiB, ram_total_bytes=256 * GiB, ram_available_bytes=200 * GiB,
                disk_free_bytes=500 * GiB, port_29500_free=True, free_port=41000,
                pynvml_dists={"nvidia-ml-py": "12.560.30"})
    base.update(kw)
    return Facts(**base)


def with_ckpt(f: Facts, config: ModelConfig = LLAMA_13B, mp: int = 2, batch: int = 4, seq: int = 2048,
              **recipe) -> Facts:
    shard = 26 * GiB // mp
    f.ckpt = CkptFact(path="/data/LLaMA/13B", mp=mp, config=config, vocab_size=32000, largest_shard_bytes=shard,
                      total_bytes=shard * mp)
    f.recipe = RecipeFact(max_batch_size=batch, max_seq_len=seq, **recipe)
    return f


def test_healthy_server_passes_every_check():
    f = with_ckpt(server())
    f.matmul = [MatmulResult(0, True, 150.0), MatmulResult(1, True, 150.0)]
    f.allreduce = AllreduceResult("nccl", 2, True, 256 << 20, 0.01, 20.0, 20.0, "2.21.5")
    f.active_run = ["allreduce", "gpu-matmul"]
    f.network = NetFacts(interfaces={"lo": ["127.0.0.1"], "eno1": ["10.0.0.5"]}, hostname="gpu1",
                         hostname_addr="10.0.0.5")
    results = {c.name: apply_rule(c, f) for c in CHECKS}
    assert {n: r.status for n, r in results.items() if r.status != "ok"} == {"rendezvous": "skip"}  # one server
    assert "MP 2 x DP 1" in results["mp-plan"].finding
    assert "20.0 GB/s" in results["allreduce"].finding


def test_cpu_only_torch_on_gpu_server_fails_with_exact_install_command():
    f = server(torch_version="2.6.0+cpu", torch_cuda=None, torch_arch_list=[], nccl_available=False)
    r = R.rule_torch_build(f)
    assert r.status == "fail" and "CPU-only" in r.finding and "RTX A6000" in r.finding
    assert r.fix == "pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu124"


def test_cpu_only_torch_install_command_follows_driver_cuda():
    f = server(torch_version="2.6.0+cpu", torch_cuda=None, driver_version="535.104.05", driver_cuda="12.2")
    assert R.rule_torch_build(f).fix.endswith("/whl/cu121")
    f = server(torch_version="2.6.0+cpu", torch_cuda=None, driver_version="580.65.06", driver_cuda="13.0")
    assert R.rule_torch_build(f).fix.endswith("/whl/cu130")


def test_cpu_only_torch_without_gpu_is_a_warning_naming_what_to_install_on_a_gpu_server():
    f = Facts(torch_version="2.13.0+cpu", python_version="3.11.7", gloo_available=True, dist_available=True)
    r = R.rule_torch_build(f)
    assert r.status == "warn" and "no NVIDIA GPU" in r.finding
    assert "pip install --force-reinstall torch --index-url https://download.pytorch.org/whl/cu126" in r.fix


def test_driver_470_with_torch_cu121_fails_and_names_driver_and_cu118_build():
    f = server(driver_version="470.82.01", driver_cuda="11.4", torch_version="2.1.0+cu121", torch_cuda="12.1")
    r = R.rule_driver(f)
    assert r.status == "fail" and "470.82.01" in r.finding and "12.1" in r.finding
    assert ">= 530.30.02" in r.fix
    assert "https://download.pytorch.org/whl/cu118" in r.fix  # 11.8 runs on 470 via minor-version compat


def test_driver_between_major_and_toolkit_minimum_warns_minor_version_compat():
    f = server(driver_version="535.104.05", driver_cuda="12.2", torch_cuda="12.4")
    r = R.rule_driver(f)
    assert r.status == "warn" and "minor-version compatibility" in r.finding and "550.54.14" in r.fix


def test_driver_new_enough_is_ok_and_driver_max_cuda_comes_from_table_without_nvml():
    assert R.rule_driver(server()).status == "ok"
    t = R.tables()
    assert R.driver_max_cuda("470.82.01", t) == "11.4"
    assert R.driver_max_cuda("580.159.04", t) == "13.0"
    assert R.toolkit_min("12.7", t) == "560.28.03"  # unlisted minor: the nearest listed one below


def test_sm120_gpu_with_torch_without_sm120_fails_no_kernel_image_with_cu128_fix():
    gpu = GpuInfo(0, "NVIDIA GeForce RTX 5090", 32 * GiB, 31 * GiB, (12, 0))
    f = server(gpus=[gpu], gpus_total=1, driver_version="575.51.03", driver_cuda="12.9")
    r = R.rule_gpus(f)
    assert r.status == "fail" and "sm_120" in r.finding and "no kernel image" in r.finding
    assert "whl/cu12" in r.fix and int(r.fix.split("whl/cu")[1][:3]) >= 128


def test_sm120_with_driver_too_old_for_cuda_128_says_upgrade_driver():
    gpu = GpuInfo(0, "NVIDIA GeForce RTX 5090", 32 * GiB, 31 * GiB, (12, 0))
    r = R.rule_gpus(server(gpus=[gpu], gpus_total=1, driver_version="550.54.14", driver_cuda="12.4"))
    assert r.status == "fail" and "upgrade the NVIDIA driver to >= 570.26" in r.fix


def test_arch_support_binary_compat_ptx_and_arch_specific():
    assert R.arch_support((8, 9), ["sm_80", "sm_86"]) == "sass"  # sm_86 cubin runs on 8.9
    assert R.arch_support((9, 0), ["sm_80", "compute_80"]) == "ptx"
    assert R.arch_support((12, 0), ["sm_80", "sm_90"]) is None
    assert R.arch_support((10, 3), ["sm_100a"]) is None  # arch-specific cubins run on that exact GPU only


def test_compute_capability_falls_back_to_gpu_table_by_name():
    t = R.tables()
    assert R.gpu_cc(GpuInfo(0, "NVIDIA RTX A6000", 1, 1, None), t) == (8, 6)
    assert R.gpu_cc(GpuInfo(0, "NVIDIA H100 80GB HBM3", 1, 1, None), t) == (9, 0)
    assert R.gpu_cc(GpuInfo(0, "NVIDIA GeForce RTX 5090", 1, 1, None), t) == (12, 0)


def test_one_gpu_and_mp2_checkpoint_fails_and_names_reshard_or_int8():
    f = with_ckpt(server(gpus=[a6000(0)], gpus_total=1))
    r = R.rule_mp_plan(f)
    assert r.status == "fail" and "MP=2" in r.finding and "1 usable GPU" in r.finding
    assert "llamakit reshard /data/LLaMA/13B /data/LLaMA/13B-mp1 --mp 1" in r.fix  # 13B bf16 fits 48 GB


def test_one_small_gpu_and_mp2_checkpoint_suggests_int8():
    small = GpuInfo(0, "NVIDIA GeForce RTX 3090", 24 * GiB, 23 * GiB, (8, 6))
    r = R.rule_mp_plan(with_ckpt(server(gpus=[small], gpus_total=1), batch=1, seq=512))
    assert r.status == "fail" and "--mp 1" in r.fix and "quantize: int8" in r.fix


def test_cuda_visible_devices_hiding_a_gpu_is_named_as_the_cause():
    f = with_ckpt(server(gpus=[a6000(0)], gpus_total=2, cuda_visible_devices="0"))
    assert R.rule_mp_plan(f).fix.startswith("unset CUDA_VISIBLE_DEVICES")
    assert R.rule_visible_devices(f).status == "warn"
    r = R.rule_visible_devices(server(gpus=[], gpus_total=2, cuda_visible_devices=""))
    assert r.status == "fail" and "hides all 2" in r.finding


def test_more_gpus_than_mp_gives_data_parallel_replicas():
    gpus = [a6000(i) for i in range(4)]
    r = R.rule_mp_plan(with_ckpt(server(gpus=gpus, gpus_total=4)))
    assert r.status == "ok" and "4 processes (MP 2 x DP 2)" in r.finding


def test_memory_fit_a_batch_beyond_the_cache_is_an_upper_limit_not_a_failure():
    """Paged KV cache: 256 x 4,096 tokens do not fit at once, but the run does (sequences take blocks as they grow);
    the finding says what the cache holds. Only when not even one sequence of max_seq_len fits does it fail."""
    r = R.rule_memory_fit(with_ckpt(server(), mp=2, batch=256, seq=4096))
    assert r.status == "ok" and "sequences of max_seq_len 4096" in r.finding and "upper limit" in r.finding
    small = GpuInfo(0, "RTX 4000", 16 * GiB, 16 * GiB, (8, 6))  # 12.1 GiB of weights per GPU at MP 2
    r = R.rule_memory_fit(with_ckpt(server(gpus=[small, small]), mp=2, batch=4, seq=65536))
    assert r.status == "fail" and "not even one sequence of max_seq_len 65536" in r.finding
    assert "shorter max_seq_len" in r.fix
    r = R.rule_memory_fit(with_ckpt(server(), mp=2, batch=4, seq=2048, gpu_memory_utilization=0.25))
    assert r.status == "fail" and "(gpu_memory_utilization 0.25)" in r.finding and "raise gpu_memory_utilization" \
        in r.fix


def test_memory_fit_counts_an_fp8_kv_cache_and_points_to_it_when_the_batch_does_not_fit_at_once():
    """The recipe's kv_cache_dtype: fp8 halves a token's bytes, so the cache doctor states holds twice the tokens;
    with the default cache and a batch beyond it, the finding names the key."""
    auto = R.rule_memory_fit(with_ckpt(server(), mp=2, batch=256, seq=4096))
    fp8 = R.rule_memory_fit(with_ckpt(server(), mp=2, batch=256, seq=4096, kv_cache_dtype="fp8"))

    def tokens(finding: str) -> int:
        return int(finding.split("the KV cache holds ")[1].split(" tokens")[0].replace(",", ""))

    assert auto.status == fp8.status == "ok" and abs(tokens(fp8.finding) - 2 * tokens(auto.finding)) <= 32
    assert "kv_cache_dtype: fp8" in auto.finding and "kv_cache_dtype" not in fp8.finding
    assert "kv_cache_dtype" not in R.rule_memory_fit(with_ckpt(server(), mp=2, batch=2, seq=512)).finding  # all fit


def test_memory_fit_weights_too_big_suggest_int8():
    small = GpuInfo(0, "Tesla T4", 15 * GiB, 15 * GiB, (7, 5))
    r = R.rule_memory_fit(with_ckpt(server(gpus=[small], gpus_total=1), config=LLAMA_13B, mp=1, batch=1, seq=512))
    assert r.status == "fail" and "fp16" in r.finding and "quantize: int8" in r.fix


def test_memory_fit_warns_when_another_process_holds_the_gpu():
    busy = dataclasses.replace(a6000(1), free_bytes=2 * GiB)
    r = R.rule_memory_fit(with_ckpt(server(gpus=[a6000(0), busy])))
    assert r.status == "warn" and "nvidia-smi" in r.fix


def test_64mb_shm_fails_on_multi_gpu_and_warns_on_one():
    r = R.rule_shm(server(shm_bytes=64 << 20, shm_free_bytes=64 << 20))
    assert r.status == "fail" and "64 MiB" in r.finding and "--shm-size" in r.fix and "--ipc=host" in r.fix
    assert R.rule_shm(server(shm_bytes=64 << 20, shm_free_bytes=1 << 20, gpus=[a6000(0)])).status == "warn"


def test_ram_smaller_than_largest_shard_fails():
    f = with_ckpt(server(ram_available_bytes=8 * GiB), mp=1)
    r = R.rule_ram(f)
    assert r.status == "fail" and "largest shard" in r.finding and "llamakit reshard" in r.fix


def test_missing_fairscale_fails_with_pip_command():
    f = server()
    f.versions["fairscale"] = None
    r = R.rule_packages(f)
    assert r.status == "fail" and "fairscale" in r.finding and r.fix == "pip install fairscale"


def test_leftover_torchrun_variables_warn_and_unset_them():
    f = server(leftover_env={"WORLD_SIZE": "2", "RANK": "0", "NCCL_DEBUG": "INFO", "NCCL_P2P_DISABLE": "1"})
    r = R.rule_dist_env(f)
    assert r.status == "warn" and "WORLD_SIZE=2" in r.finding and "NCCL_P2P_DISABLE=1" in r.finding
    assert r.fix == "unset WORLD_SIZE RANK"  # NCCL_P2P_DISABLE=1 is one of doctor's own fixes: not undone


def test_nccl_tuning_variables_are_listed_not_flagged():
    env = {"NCCL_NVLS_ENABLE": "0", "NCCL_DEBUG": "INFO"}
    passed = AllreduceResult("nccl", 2, True, 256 << 20, 0.01, 20.0, 20.0, "2.21.5")
    r = R.rule_dist_env(server(leftover_env=env, allreduce=passed))
    assert r.status == "ok" and "NCCL_NVLS_ENABLE=0 (the NCCL test passed with them)" in r.finding
    failed = AllreduceResult("nccl", 2, False, error="unhandled system error")
    assert "the NCCL test failed: they may be why" in R.rule_dist_env(server(leftover_env=env, allreduce=failed)).finding
    untested = R.rule_dist_env(server(leftover_env=env, allreduce=None)).finding  # doctor --fast, or no GPU
    assert "not tested here" in untested and "passed" not in untested
    assert R.rule_dist_env(server(leftover_env={"NCCL_DEBUG": "INFO"})).status == "ok"


def test_deprecated_pynvml_shadowing_nvidia_ml_py_fails():
    r = R.rule_pynvml(server(pynvml_dists={"pynvml": "11.5.0", "nvidia-ml-py": "12.560.30"}))
    assert r.status == "fail" and "pip uninstall -y pynvml" in r.fix
    assert R.rule_pynvml(server(pynvml_dists={"pynvml": "12.0.0", "nvidia-ml-py": "12.560.30"})).status == "warn"


def test_port_29500_taken_names_a_free_port():
    r = R.rule_ports(server(port_29500_free=False, free_port=41234))
    assert r.status == "warn" and "--master-port 41234" in r.fix


def test_allreduce_hang_gives_the_usual_nccl_fixes():
    f = server(allreduce=AllreduceResult("nccl", 2, False, timed_out=True, error="no answer within 120 s"),
               active_run=["allreduce"])
    r = R.rule_allreduce(f)
    assert r.status == "fail" and "hung" in r.finding
    for hint in ("NCCL_DEBUG=INFO", "NCCL_P2P_DISABLE=1", "shm"):
        assert hint in r.fix


def test_no_peer_access_is_a_warning_with_p2p_hint():
    r = R.rule_peer_access(server(p2p={"0-1": False}))
    assert r.status == "warn" and "NCCL_P2P_DISABLE=1" in r.fix


def test_matmul_no_kernel_image_points_to_the_right_build():
    gpu = GpuInfo(0, "NVIDIA GeForce RTX 5090", 32 * GiB, 31 * GiB, (12, 0))
    f = server(gpus=[gpu], gpus_total=1, driver_cuda="12.8", driver_version="570.86.10", active_run=["gpu-matmul"],
               matmul=[MatmulResult(0, False, error="CUDA error: no kernel image is available for execution")])
    r = R.rule_gpu_matmul(f)
    assert r.status == "fail" and "whl/cu128" in r.fix


def test_machine_without_nvml_or_gpus_gives_skips_not_failures():
    f = Facts(python_version="3.11.7", env_kind="venv", torch_version="2.13.0+cpu", dist_available=True,
              gloo_available=True, nvml_error="NVMLError_LibraryNotFound", shm_bytes=GiB * 8, shm_free_bytes=GiB * 8,
              ram_total_bytes=GiB * 8, ram_available_bytes=GiB * 4, disk_free_bytes=GiB * 50, port_29500_free=True,
              pynvml_dists={"nvidia-ml-py": "13.0"},
              versions={"llamakit": "0.1.0", "torch": "2.13.0+cpu", "fairscale": "0.4.13", "sentencepiece": "0.2"})
    statuses = {c.name: apply_rule(c, f).status for c in CHECKS}
    assert "fail" not in statuses.values()
    assert statuses["driver"] == statuses["gpus"] == statuses["gpu-matmul"] == "skip"


def test_a_crashing_rule_becomes_a_failed_row():
    def boom(_f: Facts) -> R.CheckResult:
        raise ZeroDivisionError("planted")

    r = apply_rule(dataclasses.replace(BY_NAME["python"], rule=boom), Facts())
    assert r.status == "fail" and "crashed" in r.finding and "ZeroDivisionError: planted" in r.finding


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.name)
def test_every_rule_survives_empty_facts(check):
    assert apply_rule(check, Facts()).status in ("ok", "warn", "fail", "skip")
    assert "crashed" not in apply_rule(check, Facts()).finding
