"""What doctor knows about this machine, gathered once into plain dataclasses (no CUDA init: NVML and torch.version)."""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import os
import platform
import shutil
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from llamakit import defaults
from llamakit.distributed import free_port, port_is_free
from llamakit.gpus import GpuInfo, apply_visible_devices, read_gpu

# Environment variables a finished or crashed torchrun leaves behind; they change what a new launch does.
DIST_VARS = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR", "MASTER_PORT",
             "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")
PACKAGES = ("llamakit", "torch", "fairscale", "sentencepiece", "tiktoken", "pydantic", "nvidia-ml-py")
IMPORT_NAMES = {"nvidia-ml-py": "pynvml"}
DEFAULT_PORT = 29500


@dataclass
class CkptFact:
    """The checkpoint named by --ckpt-dir or the recipe (error set when it cannot be opened)."""

    path: str
    mp: int = 0
    config: Any = None  # llamakit.checkpoint.ModelConfig
    vocab_size: int = 0
    largest_shard_bytes: int = 0
    total_bytes: int = 0
    error: str | None = None
    fix: str = ""


@dataclass
class RecipeFact:
    """The parts of a recipe that decide fit and launch (defaults when only --ckpt-dir was given)."""

    path: str | None = None
    max_seq_len: int = defaults.MAX_SEQ_LEN
    max_batch_size: int = defaults.MAX_BATCH_SIZE
    dtype: str = "auto"  # auto | bf16 | fp16 | fp32 (auto: bf16 on compute capability >= 8.0, else fp16)
    device: str = "auto"  # auto | cuda | cpu
    nproc: str | int = "auto"
    quantize: str | None = None
    gpu_memory_utilization: float = 1.0  # the share of each GPU run may use
    kv_cache_dtype: str = "auto"  # auto | fp8 | fp8_e4m3
    out_path: str | None = None
    error: str | None = None
    fix: str = ""


@dataclass
class MatmulResult:
    """Outcome of the matmul probe on one GPU."""

    device: int
    ok: bool
    tflops: float | None = None
    max_err: float | None = None
    seconds: float = 0.0
    error: str | None = None


@dataclass
class AllreduceResult:
    """Outcome of the all-reduce probe across `world` processes."""

    backend: str
    world: int
    ok: bool
    bytes: int = 0
    seconds: float = 0.0
    busbw_gbps: float | None = None
    algbw_gbps: float | None = None
    nccl_version: str | None = None
    error: str | None = None
    timed_out: bool = False
    peers: dict[str, bool] = field(default_factory=dict)  # "0-1": can_device_access_peer, from the probe


@dataclass
class Facts:
    """Everything the rules look at. Gatherers never raise: what they could not learn goes into `errors`."""

    python_version: str = ""
    python_exe: str = ""
    os_name: str = ""
    env_kind: str = "none"  # conda | venv | none
    env_name: str | None = None
    versions: dict[str, str | None] = field(default_factory=dict)  # None = not installed / not importable
    torch_version: str | None = None
    torch_cuda: str | None = None
    torch_hip: str | None = None
    torch_arch_list: list[str] = field(default_factory=list)
    dist_available: bool = False
    nccl_available: bool = False
    gloo_available: bool = False
    nccl_version: str | None = None
    nvml_ok: bool = False
    nvml_error: str | None = None
    driver_version: str | None = None
    driver_cuda: str | None = None  # the highest CUDA the driver supports, e.g. "13.0"
    nvidia_present: bool = False  # an NVIDIA driver or device node exists, even if NVML cannot be used
    gpus: list[GpuInfo] = field(default_factory=list)  # visible ones (CUDA_VISIBLE_DEVICES applied)
    gpus_total: int = 0  # all NVML devices
    p2p: dict[str, bool] = field(default_factory=dict)  # "i-j" -> NVML peer read status OK
    cuda_visible_devices: str | None = None
    shm_bytes: int | None = None
    shm_free_bytes: int | None = None
    ram_total_bytes: int | None = None
    ram_available_bytes: int | None = None
    disk_path: str = "."
    disk_free_bytes: int | None = None
    port_29500_free: bool | None = None
    free_port: int | None = None
    leftover_env: dict[str, str] = field(default_factory=dict)
    pynvml_dists: dict[str, str] = field(default_factory=dict)  # distribution name -> version, for pynvml/nvidia-ml-py
    pynvml_file: str | None = None
    ckpt: CkptFact | None = None
    recipe: RecipeFact | None = None
    matmul: list[MatmulResult] | None = None  # None: not run
    allreduce: AllreduceResult | None = None
    active_run: list[str] = field(default_factory=list)  # active tests that were attempted (not --fast)
    network: Any = None  # doctor.network.NetFacts: interfaces, and the rendezvous host when --master-addr is given
    errors: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view (the model config becomes its params dict)."""
        d = asdict(self)
        if self.ckpt is not None and self.ckpt.config is not None:
            d["ckpt"]["config"] = {k: v for k, v in asdict(self.ckpt.config).items() if k != "extra"}
        return d


def _err(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return f"{type(e).__name__}: {text}"[:300]


def _python(f: Facts) -> None:
    f.python_version = platform.python_version()
    f.python_exe = sys.executable
    try:
        osr = platform.freedesktop_os_release()
        f.os_name = f"{osr.get('PRETTY_NAME', osr.get('NAME', 'Linux'))}, kernel {platform.release()}"
    except (OSError, AttributeError):
        f.os_name = f"{platform.system()} {platform.release()}"
    if os.environ.get("CONDA_PREFIX") and Path(sys.prefix).resolve() == Path(os.environ["CONDA_PREFIX"]).resolve():
        f.env_kind, f.env_name = "conda", os.environ.get("CONDA_DEFAULT_ENV") or Path(sys.prefix).name
    elif sys.prefix != getattr(sys, "base_prefix", sys.prefix):
        f.env_kind, f.env_name = "venv", sys.prefix
    elif (Path(sys.prefix) / "conda-meta").is_dir():
        f.env_kind, f.env_name = "conda", Path(sys.prefix).name


def _versions(f: Facts) -> None:
    for name in PACKAGES:
        mod = IMPORT_NAMES.get(name, name)
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            f.versions[name] = None
            continue
        try:
            f.versions[name] = md.version(name)
        except md.PackageNotFoundError:
            if name == "llamakit":
                from llamakit import __version__
                f.versions[name] = f"{__version__} (checkout)"
            else:
                f.versions[name] = "unknown version"


def _torch(f: Facts) -> None:
    try:
        import torch
    except Exception as e:  # noqa: BLE001 - a broken torch install is a finding, not a crash
        f.errors["torch"] = _err(e)
        return
    f.torch_version = str(torch.__version__)
    f.torch_cuda = getattr(torch.version, "cuda", None)
    f.torch_hip = getattr(torch.version, "hip", None)
    flags = None
    getter = getattr(torch._C, "_cuda_getArchFlags", None)  # the compiled arch list, without initialising CUDA
    if getter is not None:
        try:
            flags = getter()
        except Exception:  # noqa: BLE001
            flags = None
    f.torch_arch_list = flags.split() if flags else []
    try:
        import torch.distributed as dist
        f.dist_available = bool(dist.is_available())
        if f.dist_available:
            f.nccl_available = bool(dist.is_nccl_available())
            f.gloo_available = bool(dist.is_gloo_available())
    except Exception as e:  # noqa: BLE001
        f.errors["torch.distributed"] = _err(e)
    if f.nccl_available:
        try:
            v = torch.cuda.nccl.version()
            f.nccl_version = ".".join(str(x) for x in v) if isinstance(v, tuple) else str(v)
        except Exception as e:  # noqa: BLE001
            f.errors["nccl"] = _err(e)


def _nvml(f: Facts) -> None:
    f.cuda_visible_devices = os.environ.get("CUDA_VISIBLE_DEVICES")
    f.nvidia_present = Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()
    try:
        import pynvml
    except Exception as e:  # noqa: BLE001
        f.nvml_error = f"nvidia-ml-py not importable ({_err(e)})"
        _proc_driver(f)
        return
    try:
        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - no driver / library: a clean "no NVIDIA GPU" report
        f.nvml_error = _err(e)
        _proc_driver(f)
        return
    try:
        f.nvml_ok = True
        f.nvidia_present = True
        v = pynvml.nvmlSystemGetDriverVersion()
        f.driver_version = v.decode() if isinstance(v, bytes) else str(v)
        try:
            c = int(pynvml.nvmlSystemGetCudaDriverVersion_v2())
        except Exception:  # noqa: BLE001 - older bindings only have the v1 call
            c = int(pynvml.nvmlSystemGetCudaDriverVersion())
        f.driver_cuda = f"{c // 1000}.{(c % 1000) // 10}"
        count = pynvml.nvmlDeviceGetCount()
        f.gpus_total = count
        handles = {}
        for i in apply_visible_devices(list(range(count)), f.cuda_visible_devices):
            handles[i] = pynvml.nvmlDeviceGetHandleByIndex(i)
            f.gpus.append(read_gpu(pynvml, i))
        idx = sorted(handles)
        for a in idx:
            for b in idx:
                if a < b:
                    try:
                        st = pynvml.nvmlDeviceGetP2PStatus(handles[a], handles[b], pynvml.NVML_P2P_CAPS_INDEX_READ)
                        f.p2p[f"{a}-{b}"] = st == pynvml.NVML_P2P_STATUS_OK
                    except Exception:  # noqa: BLE001 - unsupported query: leave unknown
                        pass
    except Exception as e:  # noqa: BLE001
        f.errors["nvml"] = _err(e)
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _proc_driver(f: Facts) -> None:
    """Read the driver version from /proc when NVML is unusable (it still tells us a GPU server is here)."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts) and int(parts[0]) >= 300:
            f.driver_version = word
            return


def _host(f: Facts, out_dir: Path) -> None:
    try:
        st = os.statvfs("/dev/shm")
        f.shm_bytes, f.shm_free_bytes = st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize
    except OSError as e:
        f.errors["shm"] = _err(e)
    try:
        import psutil
        vm = psutil.virtual_memory()
        f.ram_total_bytes, f.ram_available_bytes = int(vm.total), int(vm.available)
    except Exception:  # noqa: BLE001 - psutil missing: fall back to /proc/meminfo
        try:
            info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
            f.ram_total_bytes = int(info["MemTotal"].split()[0]) * 1024
            f.ram_available_bytes = int(info["MemAvailable"].split()[0]) * 1024
        except Exception as e:  # noqa: BLE001
            f.errors["ram"] = _err(e)
    probe = out_dir
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    f.disk_path = str(probe)
    try:
        f.disk_free_bytes = shutil.disk_usage(probe).free
    except OSError as e:
        f.errors["disk"] = _err(e)
    f.port_29500_free = port_is_free(DEFAULT_PORT)
    f.free_port = find_free_port()
    f.leftover_env = {k: v for k, v in sorted(os.environ.items()) if k in DIST_VARS or k.startswith("NCCL_")}


def find_free_port() -> int | None:
    """A TCP port the OS says is free right now (None when none can be bound)."""
    try:
        return free_port()
    except OSError:
        return None


def _pynvml_dists(f: Facts) -> None:
    for name in ("pynvml", "nvidia-ml-py", "nvidia-ml-py3"):
        try:
            f.pynvml_dists[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    try:
        spec = importlib.util.find_spec("pynvml")
        f.pynvml_file = spec.origin if spec else None
    except (ImportError, ValueError):
        f.pynvml_file = None


def _recipe(path: Path) -> tuple[RecipeFact, str | None]:
    """Read the recipe through the run pipeline's loader; returns the fact and the recipe's checkpoint folder."""
    r = RecipeFact(path=str(path))
    from llamakit.run.recipe import load_recipe, resolve_paths  # the run pipeline owns the recipe format

    try:
        loaded = load_recipe(path)
        rec = loaded.recipe
        paths = resolve_paths(loaded)  # builtin:NAME and relative paths, as run resolves them
        ck, out = paths.ckpt_dir, paths.out_path
    except Exception as e:  # noqa: BLE001 - LlamakitError carries its own fix
        what, where = getattr(e, "what", None), getattr(e, "where", None)
        r.error = (f"{where}: {what}" if where else what) if what else _err(e)
        r.fix = getattr(e, "fix", "") or "check the recipe against recipes/demo.yaml"
        return r, None
    r.max_seq_len = int(getattr(rec, "max_seq_len", r.max_seq_len))
    r.max_batch_size = int(getattr(rec, "max_batch_size", r.max_batch_size))
    r.dtype = str(getattr(rec, "dtype", r.dtype))
    r.device = str(getattr(rec, "device", r.device))
    r.nproc = getattr(rec, "nproc", "auto")
    r.gpu_memory_utilization = float(getattr(rec, "gpu_memory_utilization", 1.0))
    r.kv_cache_dtype = str(getattr(rec, "kv_cache_dtype", "auto"))
    q = getattr(rec, "quantize", None)
    r.quantize = str(q) if q and str(q) != "none" else None
    r.out_path = str(out) if out else None
    return r, (str(ck) if ck else None)


def _ckpt(path: str) -> CkptFact:
    c = CkptFact(path=path)
    try:
        from llamakit.checkpoint import open_checkpoint
        ck = open_checkpoint(path)
    except Exception as e:  # noqa: BLE001
        c.error = getattr(e, "what", None) or _err(e)
        c.fix = getattr(e, "fix", "") or "check the folder holds consolidated.NN.pth files and params.json"
        return c
    c.mp = ck.mp
    c.config = ck.config
    c.vocab_size = ck.config.vocab_size if ck.config.vocab_size > 0 else ck.vocab_rows
    sizes = [p.stat().st_size for p in ck.shards]
    c.largest_shard_bytes, c.total_bytes = max(sizes), sum(sizes)
    return c


def gather(ckpt_dir: str | Path | None = None, recipe: str | Path | None = None, out_dir: str | Path | None = None,
           need_torch: bool = True) -> Facts:
    """Collect every fact once; each part is guarded so a broken piece of the system never stops the report."""
    f = Facts()
    ck_path = str(ckpt_dir) if ckpt_dir else None
    if recipe:
        f.recipe, from_recipe = _recipe(Path(recipe))
        ck_path = ck_path or from_recipe
    elif ck_path:
        f.recipe = RecipeFact()
    parts = [("python", _python), ("versions", _versions), ("nvml", _nvml), ("pynvml", _pynvml_dists)]
    if need_torch:
        parts.append(("torch", _torch))
    for name, fn in parts:
        try:
            fn(f)
        except Exception as e:  # noqa: BLE001
            f.errors[name] = _err(e)
    out = Path(out_dir) if out_dir else (Path(f.recipe.out_path).parent if f.recipe and f.recipe.out_path
                                         else Path.cwd())
    try:
        _host(f, out)
    except Exception as e:  # noqa: BLE001
        f.errors["host"] = _err(e)
    if ck_path:
        f.ckpt = _ckpt(ck_path)
    return f
