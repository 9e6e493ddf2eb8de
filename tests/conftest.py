"""Shared fixtures: tiny Meta-format checkpoints built once per test session (seconds, no download)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from llamakit.checkpoint.tiny import make_tiny


@pytest.fixture(scope="session")
def tiny_factory(tmp_path_factory):
    """Return make(style='llama2', mp=1, seed=0) -> Path of a cached, read-only-by-convention tiny checkpoint."""
    cache: dict[tuple[str, int, int], Path] = {}
    root = tmp_path_factory.mktemp("tiny")

    def make(style: str = "llama2", mp: int = 1, seed: int = 0) -> Path:
        key = (style, mp, seed)
        if key not in cache:
            cache[key] = make_tiny(root / f"{style}-mp{mp}-s{seed}", mp=mp, style=style, seed=seed)
        return cache[key]

    return make


@pytest.fixture
def tiny_copy(tiny_factory, tmp_path):
    """Return copy(style, mp) -> a private copy of a tiny checkpoint that a test may damage."""

    def copy(style: str = "llama2", mp: int = 1, seed: int = 0) -> Path:
        dst = tmp_path / f"{style}-mp{mp}-copy"
        shutil.copytree(tiny_factory(style, mp, seed), dst)
        return dst

    return copy


@pytest.fixture(scope="session")
def mp1_group():
    """A real single-process gloo group with fairscale model parallel of size 1 (for in-process engines)."""
    import os

    import torch.distributed as dist
    from fairscale.nn.model_parallel.initialize import initialize_model_parallel, model_parallel_is_initialized

    if not dist.is_initialized():
        from llamakit.distributed import free_port

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    if not model_parallel_is_initialized():
        initialize_model_parallel(1)
    os.environ.setdefault("LLAMAKIT_TEST_MP1", "1")
    return dist.group.WORLD
