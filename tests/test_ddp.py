"""A continual run with replay under DDP: 2 CPU processes (gloo), the real quickstart config shrunk.

Checks what DDP makes hard: every rank's buffer is in the checkpoint (Lightning writes rank 0's
callback state only), resuming gives each rank its own buffer back, no training sample is lost or
stored twice across ranks, and the experience-end metrics count every test sample once.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from data_modules import MedMNISTDataModule
from framework.callbacks.continual_eval import METRICS_JSON
from framework.paradigms import ContinualModule
from helpers import shrink_config

pytestmark = pytest.mark.slow

MEDCL = Path(sys.executable).parent / "medcl"
DDP = ["--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"]
TASKS = ["bloodmnist", "organamnist"]


def _run(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.run([str(MEDCL), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def _digests(images):
    return [hashlib.sha1(image.contiguous().numpy().tobytes()).hexdigest() for image in images]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    config = shrink_config("experiments/quickstart.yaml", out, train_subset=64, eval_subset=40, batch_size=16, train_batches=2)
    data = yaml.safe_load(config.read_text())
    for callback in data["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ReplayCallback"):
            callback["init_args"].update(capacity=1000, policy="reservoir")  # larger than the stream: nothing evicted
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    _run(["fit", "--config", str(config), *DDP], REPO)
    (run_dir,) = (out / "run").glob("version_*")
    return {"config": config, "run_dir": run_dir, "out": out}


def test_checkpoint_holds_both_ranks_buffers_and_no_sample_is_lost_or_repeated(ddp_run):
    ckpt = torch.load(ddp_run["run_dir"] / "checkpoints" / "experience=0-epoch=0.ckpt", map_location="cpu", weights_only=True)
    state = ckpt["callbacks"]["ReplayCallback"]
    assert state["world_size"] == 2 and len(state["ranks"]) == 2
    per_rank = [set(_digests(rank["tasks"]["bloodmnist"]["image"])) for rank in state["ranks"]]
    assert all(len(s) == 32 for s in per_rank)  # each rank saw its half: 2 batches x 16
    assert not per_rank[0] & per_rank[1]  # no sample stored by both ranks
    dm = MedMNISTDataModule(flag="bloodmnist", data_dir="data/demo/medmnist", train_subset=64, val_subset=40, test_subset=40, batch_size=16)
    dm.setup()
    train = dm.dataset("train")
    assert per_rank[0] | per_rank[1] == set(_digests(train[i]["image"] for i in range(len(train))))  # none dropped


def test_metrics_are_synced_and_count_every_test_sample_once(ddp_run):
    result = json.loads((ddp_run["run_dir"] / METRICS_JSON).read_text())
    assert result["tasks"] == TASKS and len(result["accuracy_matrix"]) == 2
    module = ContinualModule.load_from_checkpoint(ddp_run["run_dir"] / "checkpoints" / "last.ckpt", map_location="cpu")
    for task, value in zip(TASKS, result["accuracy_matrix"][-1]):
        dm = MedMNISTDataModule(flag=task, data_dir="data/demo/medmnist", train_subset=64, val_subset=40, test_subset=40, batch_size=16)
        dm.setup()
        single = module.evaluate(task, dm.loader("test"))  # one process, the whole test subset
        assert value == pytest.approx(single["score"], abs=1e-6)
        assert result["details"]["1"][task]["auroc"] == pytest.approx(single["auroc"], abs=1e-6)


def test_resume_gives_each_rank_its_own_buffer(ddp_run):
    mid = ddp_run["run_dir"] / "checkpoints" / "experience=0-epoch=0.ckpt"
    saved = torch.load(mid, map_location="cpu", weights_only=True)["callbacks"]["ReplayCallback"]["ranks"]
    resumed_root = ddp_run["out"] / "resumed"
    _run(["fit", "--config", str(ddp_run["config"]), *DDP, "--ckpt_path", str(mid),
          "--trainer.default_root_dir", str(resumed_root),
          "--trainer.logger", json.dumps([{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(resumed_root), "name": "run"}}])], REPO)
    (last,) = resumed_root.glob("run/version_*/checkpoints/last.ckpt")
    final = torch.load(last, map_location="cpu", weights_only=True)["callbacks"]["ReplayCallback"]["ranks"]
    for rank in range(2):
        # experience 1 trains OrganA only, so rank r's BloodMNIST exemplars can only come from its restored buffer
        assert torch.equal(final[rank]["tasks"]["bloodmnist"]["image"], saved[rank]["tasks"]["bloodmnist"]["image"])
        assert len(final[rank]["tasks"]["organamnist"]["target"]) == 32
    assert not torch.equal(saved[0]["tasks"]["bloodmnist"]["image"], saved[1]["tasks"]["bloodmnist"]["image"])


def test_resume_with_another_world_size_is_refused(ddp_run):
    mid = ddp_run["run_dir"] / "checkpoints" / "experience=0-epoch=0.ckpt"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([str(MEDCL), "fit", "--config", str(ddp_run["config"]), "--ckpt_path", str(mid),
                           "--trainer.default_root_dir", str(ddp_run["out"] / "single")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "world_size" in proc.stderr and "2" in proc.stderr
