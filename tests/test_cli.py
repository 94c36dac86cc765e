"""Smoke test of the `medcl` console script on the quickstart config, as a user runs it."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO
from helpers import shrink_config


def medcl_command():
    script = Path(sys.executable).parent / "medcl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "framework.cli"]


def run(args, cwd=REPO):
    env = dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(REPO))
    return subprocess.run(medcl_command() + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_help_lists_subcommands():
    out = run(["--help"])
    assert out.returncode == 0, out.stderr
    for sub in ("fit", "validate", "test", "predict"):
        assert sub in out.stdout


@pytest.mark.slow
def test_quickstart_config_from_the_command_line(tmp_path):
    config = shrink_config("experiments/quickstart.yaml", tmp_path, keep_loggers=True)
    out = run(["fit", "--config", str(config)])
    assert out.returncode == 0, out.stderr[-3000:]
    # the accuracy matrix is printed as a table at the end of fit
    assert "Continual evaluation (ContinualModule, test split, metric: acc)" in out.stdout
    assert "after exp 1 (organamnist)" in out.stdout and "forgetting:" in out.stdout
    (metrics_json,) = list(tmp_path.rglob("continual_metrics.json"))
    result = json.loads(metrics_json.read_text())
    assert {"tasks", "accuracy_matrix", "average_accuracy", "forgetting"} <= set(result)
    assert (metrics_json.parent / "continual_metrics.csv").is_file()
    assert list(tmp_path.rglob("last.ckpt"))
    # logged to every configured logger: the CSV logger has the per-experience columns ...
    (metrics_csv,) = list(tmp_path.rglob("metrics.csv"))
    header = metrics_csv.read_text().splitlines()[0].split(",")
    assert {"continual/experience", "continual/bloodmnist/acc", "continual/organamnist/acc", "continual/forgetting"} <= set(header)
    # ... and W&B ran offline: a local run folder, no account, no network
    assert list((tmp_path / "wandb").glob("offline-run-*")), list(tmp_path.rglob("*"))[:20]


def test_bad_config_value_is_reported(tmp_path):
    config = shrink_config("experiments/quickstart.yaml", tmp_path)
    text = config.read_text().replace("flag: bloodmnist", "flag: bloodmnist3d")
    config.write_text(text)
    out = run(["fit", "--config", str(config)])
    assert out.returncode == 1
    assert "medcl: error: ValueError: MedMNISTDataModule: flag 'bloodmnist3d' is not an official MedMNIST flag" in out.stderr
    assert "Traceback" not in out.stderr


def test_debug_preset_stacks_on_an_experiment_config(tmp_path):
    from framework.cli import run_cli

    cli = run_cli(["fit", "--config", "experiments/quickstart.yaml", "--config", "experiments/debug.yaml",
                   "--trainer.default_root_dir", str(tmp_path), "--trainer.enable_progress_bar", "false"])
    assert cli.trainer.limit_train_batches == 2 and cli.trainer.loggers == []
    assert cli.trainer.global_step == 2 * 10  # 2 batches x 10 epochs (2 domains x 5 epochs each)
    run = tmp_path / "version_0"  # without a logger, the run still claims its own folder under default_root_dir
    assert (run / "continual_metrics.json").is_file()
    # 1 means one batch (not 100%), in the Lightning loops and in the experience-end matrix
    assert cli.trainer.limit_val_batches == 1 and cli.trainer.num_val_batches == [1, 1]
    assert [len(cli.datamodule.eval_dataloader(t)) for t in ("bloodmnist", "organamnist")] == [1, 1]
    assert len(cli.datamodule.domain("bloodmnist").loader("test")) > 1  # the limit is what cut it
    # the shipped checkpoint schedule: last.ckpt and one per experience end, not one per epoch
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "experience=0-epoch=4.ckpt", "experience=1-epoch=9.ckpt", "last.ckpt"]
