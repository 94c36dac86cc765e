"""Exact resume after a SIGKILL, and results that do not depend on later domains.

The quickstart (continual learning with a class-balanced replay buffer) is shrunk to 2 epochs per
experience and run in a subprocess three ways: uninterrupted; killed with SIGKILL in the second
epoch of the second experience and resumed with ``--ckpt_path <run>/checkpoints/last.ckpt``; and
killed the same way and resumed with ``--ckpt_path last``.  The resumed runs must end exactly
where the uninterrupted one ends: the same accuracy matrix (within 1e-6), the same buffer, the same
stream position, the same weights.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, SHARED_MEDMNIST
from framework.callbacks.continual_eval import METRICS_JSON
from framework.cli import run_cli
from helpers import shrink_config

pytestmark = pytest.mark.slow

MEDCL = Path(sys.executable).parent / "medcl"
KILL_EPOCH = 3  # epochs 0-1: BloodMNIST, 2-3: OrganAMNIST; last.ckpt is then the end of epoch 2


def _config(out: Path, kill: bool) -> Path:
    config = shrink_config("experiments/quickstart.yaml", out, train_subset=64, eval_subset=40, batch_size=16, train_batches=3)
    data = yaml.safe_load(config.read_text())
    data["model"]["init_args"]["epochs_per_experience"] = 2
    data["trainer"]["max_epochs"] = 4
    data["trainer"]["limit_train_batches"] = None  # whole (shrunk) epochs: 4 batches
    for callback in data["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ReplayCallback"):
            callback["init_args"]["capacity"] = 40  # smaller than the stream: the policy evicts
    if kill:
        data["trainer"]["callbacks"].append({"class_path": "kill_switch.KillAt", "init_args": {"epoch": KILL_EPOCH, "batch": 1}})
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def _medcl(args, expect_kill: bool = False):
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"), PYTHONUNBUFFERED="1")
    proc = subprocess.run([str(MEDCL), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    if expect_kill:
        assert proc.returncode == -9, f"expected the run to be killed (SIGKILL), it exited {proc.returncode}: {proc.stderr[-3000:]}"
    else:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _final(run_dir: Path):
    result = json.loads((run_dir / METRICS_JSON).read_text())
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    return result, ckpt


def _buffer(ckpt):
    (rank,) = ckpt["callbacks"]["ReplayCallback"]["ranks"]
    return rank


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("resume")
    plain = _config(base / "plain", kill=False)
    _medcl(["fit", "--config", str(plain)])
    out = {"plain": next((base / "plain" / "run").glob("version_*"))}
    for how in ("path", "last"):
        config = _config(base / how, kill=True)
        _medcl(["fit", "--config", str(config)], expect_kill=True)
        (killed,) = (base / how / "run").glob("version_*")
        assert json.loads((killed / METRICS_JSON).read_text())["experience_tasks"] == [["bloodmnist"]]  # killed in experience 2
        saved = torch.load(killed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
        assert saved["epoch"] == KILL_EPOCH - 1
        # resume without the kill switch: the same config minus the callback
        data = yaml.safe_load(config.read_text())
        data["trainer"]["callbacks"] = [c for c in data["trainer"]["callbacks"] if "kill_switch" not in c["class_path"]]
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        ckpt_path = str(killed / "checkpoints" / "last.ckpt") if how == "path" else "last"
        proc = _medcl(["fit", "--config", str(config), "--ckpt_path", ckpt_path])
        if how == "last":
            assert str(killed / "checkpoints" / "last.ckpt") in proc.stdout + proc.stderr  # says what it resumes
        out[how] = max((base / how / "run").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
    return out


@pytest.mark.parametrize("how", ["path", "last"])
def test_killed_and_resumed_run_ends_exactly_like_the_uninterrupted_one(runs, how):
    (plain, plain_ckpt), (resumed, resumed_ckpt) = _final(runs["plain"]), _final(runs[how])
    assert resumed["experience_tasks"] == plain["experience_tasks"] == [["bloodmnist"], ["organamnist"]]
    for row_a, row_b in zip(plain["accuracy_matrix"], resumed["accuracy_matrix"]):
        assert row_b == pytest.approx(row_a, abs=1e-6, nan_ok=True)
    assert resumed["forgetting"] == pytest.approx(plain["forgetting"], abs=1e-6)
    # the same stream position
    assert (resumed_ckpt["epoch"], resumed_ckpt["global_step"]) == (plain_ckpt["epoch"], plain_ckpt["global_step"])
    # the same buffer: the same exemplars in the same slots, and the same generator state
    a, b = _buffer(plain_ckpt), _buffer(resumed_ckpt)
    assert sorted(a["tasks"]) == sorted(b["tasks"])
    for task in a["tasks"]:
        for key in ("image", "target"):
            assert torch.equal(a["tasks"][task][key], b["tasks"][task][key]), (task, key)
    assert torch.equal(a["generator"], b["generator"])
    # and the same weights
    for name, value in plain_ckpt["state_dict"].items():
        assert torch.allclose(value, resumed_ckpt["state_dict"][name], atol=1e-6), name


def test_ckpt_path_last_without_a_previous_run_is_refused(tmp_path):
    config = _config(tmp_path, kill=False)
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"))
    proc = subprocess.run([str(MEDCL), "fit", "--config", str(config), "--ckpt_path", "last"], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1
    (line,) = [l for l in proc.stderr.splitlines() if l.startswith("medcl: error:")]
    assert "--ckpt_path last" in line and str(tmp_path / "run") in line and "no last.ckpt" in line
    assert not list((tmp_path / "run").glob("version_*"))  # nothing was started


@pytest.mark.skipif(not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file(), reason="needs ../shared/data/medmnist/pneumoniamnist.npz")
def test_results_do_not_depend_on_domains_later_in_the_stream(tmp_path):
    rows = {}
    for n in (2, 3):
        config = shrink_config("experiments/quickstart.yaml", tmp_path / str(n), train_subset=48, eval_subset=40, batch_size=16, train_batches=2)
        data = yaml.safe_load(config.read_text())
        if n == 3:
            data["data"]["init_args"]["domains"].append(
                {
                    "class_path": "data_modules.MedMNISTDataModule",
                    "init_args": {"flag": "pneumoniamnist", "data_dir": str(SHARED_MEDMNIST), "batch_size": 16,
                                  "train_subset": 48, "val_subset": 40, "test_subset": 40},
                }
            )
            data["trainer"]["max_epochs"] = 3
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        cli = run_cli(["fit", "--config", str(config)])
        rows[n] = json.loads((Path(cli.trainer.log_dir) / METRICS_JSON).read_text())["accuracy_matrix"]
    # rows 1 and 2 (after Blood, after OrganA), on the tasks both streams have
    for row_2, row_3 in zip(rows[2], rows[3][:2]):
        assert row_3[:2] == pytest.approx(row_2, abs=1e-6, nan_ok=True)
