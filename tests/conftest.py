"""Shared fixtures.  Everything runs offline on the CPU."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / "data" / "demo" / "medmnist"
SHARED_MEDMNIST = REPO.parent / "shared" / "data" / "medmnist"


def write_npz(path: Path, arrays: Dict[str, np.ndarray], **overrides: Optional[np.ndarray]) -> Path:
    """``np.savez(path, **arrays)`` after applying ``overrides``: a value replaces (or adds) an array, ``None`` drops it."""
    arrays = dict(arrays)
    for key, value in overrides.items():
        if value is None:
            arrays.pop(key)
        else:
            arrays[key] = value
    np.savez(path, **arrays)
    return path


@pytest.fixture(autouse=True)
def _run_from_repo_root(monkeypatch):
    """Configs use repo-relative paths, as a user running `medcl` from the checkout does."""
    monkeypatch.chdir(REPO)


@pytest.fixture
def make_npz(tmp_path):
    """Write a small MedMNIST-format file; keyword overrides replace or drop (None) arrays."""

    def _make(name="toy.npz", n=(12, 6, 6), classes=3, rgb=False, **overrides):
        rng = np.random.default_rng(0)
        arrays = {}
        for split, count in zip(("train", "val", "test"), n):
            shape = (count, 28, 28, 3) if rgb else (count, 28, 28)
            arrays[f"{split}_images"] = rng.integers(0, 256, size=shape, dtype=np.uint8)
            arrays[f"{split}_labels"] = (np.arange(count) % classes).reshape(-1, 1).astype(np.uint8)
        return write_npz(tmp_path / name, arrays, **overrides)

    return _make
