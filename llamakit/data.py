"""Finds the data that ships with llamakit (checks/ tables, recipes/, assets) in a checkout or an installed wheel."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

_PKG = Path(__file__).resolve().parent


def data_dir(name: str) -> Path:
    """Return the folder `checks` or `recipes`: inside the wheel (`llamakit/_data`) or at the checkout's top."""
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"llamakit data folder {name!r} is missing; reinstall llamakit")


def asset_path(name: str) -> Path:
    """Return a file under llamakit/assets (bundled corpus, demo model)."""
    return _PKG / "assets" / name


@lru_cache(maxsize=None)
def load_table(name: str) -> Any:
    """Load one YAML table from checks/ (e.g. `cuda_drivers.yaml`); cached, the tables never change at run time."""
    with open(data_dir("checks") / name, encoding="utf-8") as f:
        return yaml.safe_load(f)
