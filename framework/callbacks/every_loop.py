"""A callback that (re)applies a setting to the models at the start of every loop and training epoch.

A checkpoint restore may rebuild the models after ``setup``, and growth adds heads (and, for
specialised learning, models) when an experience starts: settings applied once would be lost.
"""
from __future__ import annotations

import pytorch_lightning as pl

__all__ = ["EveryLoopCallback"]


class EveryLoopCallback(pl.Callback):
    """Calls :meth:`apply` when fit, validation, test and predict start, and when a training epoch starts."""

    def apply(self, pl_module: pl.LightningModule) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply(pl_module)

    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply(pl_module)

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply(pl_module)

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.apply(pl_module)
