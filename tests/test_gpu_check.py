"""scripts/gpu_check.sh: refuses clearly without a GPU, and its code runs end to end on the CPU (--smoke).

The GPU numbers themselves come from a GPU machine (the closing notes say where); this checks the script.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: the script would run for real")
def test_without_a_gpu_the_check_refuses_and_says_why():
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "gpu_check.py")], capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "gpu_check: no CUDA device is visible (torch.cuda.is_available() is False)" in done.stderr
    assert "--smoke" in done.stderr


@pytest.mark.heavy  # three Lightning runs, one with 2 DDP processes, and a ViT-B/16 step: about 1.5 minutes
def test_smoke_run_measures_every_check(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", OUT=str(tmp_path / "out"))
    done = subprocess.run([str(REPO / "scripts" / "gpu_check.sh"), "--smoke", "--work", str(tmp_path / "work")],
                          capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    rows = {name: row for name, row in results.items() if name != "machine"}
    assert len(rows) == 3
    ddp = next(row for name, row in rows.items() if "DDP" in name)
    assert ddp["processes"] == 2  # one value per DDP process, summed
    vit = next(row for name, row in rows.items() if "ViT-B/16" in name)
    assert vit["image_tower_parameters"] > 80_000_000  # a ViT-B/16-sized tower
    assert all(row["images_per_s"] > 0 and row["timed_steps"] >= 2 for row in rows.values())
    assert "| check | processes | images/s | peak GPU memory (GiB) |" in done.stdout
