"""A callback that kills its own process with SIGKILL, as a pre-empted machine would (used by
``tests/test_resume.py`` through a config's ``class_path: kill_switch.KillAt``)."""
from __future__ import annotations

import os
import signal

import pytorch_lightning as pl


class KillAt(pl.Callback):
    """SIGKILL the process when training batch ``batch`` of epoch ``epoch`` starts (no clean-up runs).

    Args:
        epoch: the training epoch (0-based).
        batch: the batch index within that epoch.
    """

    def __init__(self, epoch: int, batch: int = 0) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if trainer.current_epoch == self.epoch and batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGKILL)
