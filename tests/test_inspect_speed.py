"""inspect (without --verify) must not read tensor data: measured as page-cache residency of a ~230 MB checkpoint."""

from __future__ import annotations

import ctypes
import os
import sys
import time
from pathlib import Path

import pytest

from llamakit.checkpoint.params import ModelConfig
from llamakit.checkpoint.synth import write_random_checkpoint
from llamakit.inspection import inspect_checkpoint

# dim 1024, 4 layers, vocab 32000: 116,925,440 parameters = 234 MB at bf16, in two shards.
BIG = ModelConfig(dim=1024, n_layers=4, n_heads=8, multiple_of=256, vocab_size=32000)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses Linux mincore/fadvise")


def _libc() -> ctypes.CDLL:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.POINTER(ctypes.c_ubyte)]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    return libc


def cached_bytes(path: Path) -> int:
    """Bytes of `path` in the page cache (mincore on a fresh mapping; mapping reads nothing)."""
    libc, size, page = _libc(), path.stat().st_size, os.sysconf("SC_PAGE_SIZE")
    fd = os.open(path, os.O_RDONLY)
    try:
        addr = libc.mmap(None, size, 1, 1, fd, 0)  # PROT_READ, MAP_SHARED
        assert addr not in (None, ctypes.c_void_p(-1).value)
        vec = (ctypes.c_ubyte * ((size + page - 1) // page))()
        rc = libc.mincore(addr, size, vec)
        libc.munmap(addr, size)
        assert rc == 0
        return sum(v & 1 for v in vec) * page
    finally:
        os.close(fd)


def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def test_inspect_reads_almost_nothing_of_the_shards(tmp_path):
    ckpt = write_random_checkpoint(tmp_path / "big", BIG, mp=2, vocab=32000, fill="zeros", checklist=False)
    shards = sorted(ckpt.glob("consolidated.*.pth"))
    size = sum(p.stat().st_size for p in shards)
    assert size > 200e6
    for p in shards:
        drop_cache(p)
    if sum(cached_bytes(p) for p in shards) > 0.05 * size:
        pytest.skip("this filesystem keeps files in memory (tmpfs?): cannot measure what is read")
    t0 = time.perf_counter()
    r = inspect_checkpoint(ckpt, gpus=[])
    seconds = time.perf_counter() - t0
    assert r.model.param_count == 116_925_440 and r.shards.matches_params
    read = sum(cached_bytes(p) for p in shards)
    assert read < 0.02 * size, f"inspect pulled {read / 1e6:.1f} MB of {size / 1e6:.0f} MB into memory"
    assert seconds < 10  # typically 0.05 s; generous for a loaded CI machine
