"""The optimizer and the lr scheduler are configurable (LightningCLI's OptimizerCallable / LRSchedulerCallable)."""
from __future__ import annotations

import pytest
import torch
import yaml

from framework.cli import run_cli
from helpers import shrink_config

SGD = {"class_path": "torch.optim.SGD", "init_args": {"lr": 0.05, "momentum": 0.9}}
STEP = {"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 1, "gamma": 0.5}}


def _config(tmp_path, **model):
    config = shrink_config("experiments/quickstart.yaml", tmp_path, train_subset=32, eval_subset=20, batch_size=16, train_batches=1)
    data = yaml.safe_load(config.read_text())
    data["model"]["init_args"].update(model)
    data["model"]["init_args"].pop("lr", None)
    data["model"]["init_args"].pop("weight_decay", None)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


@pytest.mark.slow
def test_a_configured_optimizer_and_scheduler_train_every_head(tmp_path):
    config = _config(tmp_path, optimizer=SGD, lr_scheduler=STEP, optimizer_on_new_task="reset")
    cli = run_cli(["fit", "--config", str(config)])
    (optimizer,) = cli.trainer.optimizers
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.9
    names = [g["name"] for g in optimizer.param_groups]
    assert names == ["backbone", "head:bloodmnist", "head:organamnist"]  # rebuilt with the new head (reset)
    (scheduler,) = [c.scheduler for c in cli.trainer.lr_scheduler_configs]
    assert isinstance(scheduler, torch.optim.lr_scheduler.StepLR)
    assert all(g["lr"] == pytest.approx(0.05 * 0.5) for g in optimizer.param_groups)  # one epoch since the reset: stepped once
    stored = torch.load(next(tmp_path.rglob("last.ckpt")), weights_only=True, map_location="cpu")["hyper_parameters"]
    assert stored["optimizer"]["class_path"] == "torch.optim.SGD"  # plain config in the checkpoint, no pickled callable


@pytest.mark.slow
def test_a_scheduler_with_an_optimizer_extended_by_new_heads_is_refused(tmp_path):
    config = _config(tmp_path, optimizer=SGD, lr_scheduler=STEP)
    with pytest.raises(ValueError, match=r"lr_scheduler with optimizer_on_new_task='extend' would leave the heads of \['organamnist'\]"):
        run_cli(["fit", "--config", str(config)])


def test_lr_beside_a_configured_optimizer_is_refused():
    from functools import partial

    from framework.paradigms import ContinualModule

    with pytest.raises(ValueError, match="lr=0.01 / weight_decay=0.0 set the default AdamW, but an optimizer is configured"):
        ContinualModule(lr=0.01, optimizer=partial(torch.optim.SGD, lr=0.1))
    module = ContinualModule(optimizer=partial(torch.optim.SGD, lr=0.1))  # from Python: the hparams keep a description, not the object
    assert module.optimizer_factory.func is torch.optim.SGD and "SGD" in module.hparams["optimizer"]["python_callable"]
