"""A callback that makes a run diverge at a chosen epoch, as a too-high learning rate would
(used by ``tests/test_reliability_runs.py`` through a config's ``class_path: poison.PoisonWeights``)."""
from __future__ import annotations

import pytorch_lightning as pl
import torch


class PoisonWeights(pl.Callback):
    """Set the first trainable weight to NaN when training epoch ``epoch`` starts.

    Args:
        epoch: the training epoch (0-based).
    """

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if trainer.current_epoch == self.epoch:
            with torch.no_grad():
                next(p for p in pl_module.parameters() if p.requires_grad).fill_(float("nan"))
