"""A user's package outside the repository adds a head kind, a buffer policy and a strategy, without
editing MedCL (docs/extending.md; the package is docs/examples/extending/medcl_extras, copied to a
temporary folder outside the checkout for every test)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO

SOURCE = REPO / "docs" / "examples" / "extending"


@pytest.fixture
def outside(tmp_path, monkeypatch):
    """The package, copied outside the repository and importable from there (fresh import)."""
    folder = tmp_path / "site"
    shutil.copytree(SOURCE / "medcl_extras", folder / "medcl_extras")
    monkeypatch.syspath_prepend(str(folder))
    for name in [m for m in sys.modules if m == "medcl_extras" or m.startswith("medcl_extras.")]:
        monkeypatch.delitem(sys.modules, name)
    yield folder
    from framework.core.registry import HEADS, POLICIES, STRATEGIES

    from framework.core.registry import METRICS

    HEADS.unregister("regression"), POLICIES.unregister("first_come"), STRATEGIES.unregister("l2_init"), METRICS.unregister("accuracy_spread")


def test_the_package_registers_a_kind_a_policy_and_a_strategy(outside):
    from framework.core.registry import HEADS, POLICIES, STRATEGIES
    from framework.core.specs import TaskSpec

    with pytest.raises(ValueError, match=r"field 'kind' expected one of \['classification', 'multilabel', 'prognosis', 'segmentation'\]"):
        TaskSpec(name="size", kind="regression")  # unknown before the package is imported
    import medcl_extras  # noqa: F401

    assert Path(medcl_extras.__file__).is_relative_to(outside) and not Path(medcl_extras.__file__).is_relative_to(REPO)
    from framework.core.registry import METRICS

    assert "regression" in HEADS and "first_come" in POLICIES and "l2_init" in STRATEGIES and "accuracy_spread" in METRICS
    assert TaskSpec(name="size", kind="regression").kind == "regression"
    with pytest.raises(ValueError, match="a regression task has no class_names"):
        from framework.heads import build_head

        build_head(TaskSpec(name="size", kind="regression", class_names=("a", "b")), 16)


def test_the_users_policy_keeps_first_samples_in_equal_shares(outside):
    from framework.replay import ReplayBuffer

    buffer = ReplayBuffer(10, "medcl_extras.policies.FirstComePolicy")  # a class_path works as well as the name
    buffer.add_batch("a", torch.arange(8).float().view(8, 1), torch.zeros(8, dtype=torch.long))
    buffer.add_batch("a", torch.arange(8, 16).float().view(8, 1), torch.zeros(8, dtype=torch.long))
    assert buffer.task_data("a")[0].flatten().tolist() == list(range(10))
    buffer.add_batch("b", torch.arange(100, 108).float().view(8, 1), torch.zeros(8, dtype=torch.long))
    assert buffer.counts() == {"a": 5, "b": 5}
    assert buffer.task_data("a")[0].flatten().tolist() == list(range(5))  # a keeps its first five
    assert buffer.task_data("b")[0].flatten().tolist() == [100, 101, 102, 103, 104]
    state = buffer.state_dict()
    again = ReplayBuffer(10, "first_come")
    again.load_state_dict(state)
    assert again.policy.tasks == ["a", "b"]


@pytest.mark.slow
def test_a_run_with_the_users_kind_policy_and_strategy(outside, tmp_path):
    config = yaml.safe_load((SOURCE / "experiment.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(default_root_dir=str(tmp_path / "run"), limit_train_batches=3, limit_val_batches=1, enable_progress_bar=False)
    trainer["logger"] = [{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path / "run"), "name": "log"}}]
    trainer["callbacks"] = [c if isinstance(c, dict) else str((SOURCE / c).resolve()) for c in trainer["callbacks"]]
    for domain in config["data"]["init_args"]["domains"]:
        domain["init_args"]["test_subset"] = 60
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(outside), str(REPO)]), WANDB_MODE="offline")
    out = subprocess.run([sys.executable, "-m", "framework.cli", "fit", "--config", str(path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(next((tmp_path / "run").rglob("continual_metrics.json")).read_text())
    assert result["tasks"] == ["bloodmnist", "blood_brightness"] and result["metrics"]["blood_brightness"] == "r2"
    assert "r2" in out.stdout and "(first_come)" in out.stdout + out.stderr  # the buffer summary is logged (stderr)
    (ckpt,) = list((tmp_path / "run").rglob("last.ckpt"))
    checkpoint = torch.load(ckpt, weights_only=True, map_location="cpu")
    assert [t["kind"] for t in checkpoint["medcl"]["tasks"]] == ["classification", "regression"]
    replay = checkpoint["callbacks"]["ReplayCallback"]["ranks"][0]
    assert replay["policy"] == "first_come" and set(replay["tasks"]) == {"bloodmnist", "blood_brightness"}
    assert "start" in checkpoint["callbacks"]["L2Init"]
    header = next((tmp_path / "run").rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"train/l2_init", "continual/learning_accuracy", "continual/accuracy_spread"} <= set(header)  # logged
    spread = result["metrics_per_experience"]["accuracy_spread"]  # the user's metric in the JSON, after every experience
    last = [v for v in result["accuracy_matrix"][-1] if v is not None]
    assert spread[0] == 0.0 and spread[-1] == pytest.approx(max(last) - min(last))
    assert "accuracy_spread" in (next((tmp_path / "run").rglob("continual_metrics.csv")).read_text().splitlines()[0])  # the CSV
    assert "accuracy_spread: " in out.stdout  # the printed summary
