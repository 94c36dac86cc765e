"""Checkpoints a continual run needs, and no more: ``last.ckpt`` every epoch, one per experience end."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional
from weakref import proxy

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

__all__ = ["ExperienceCheckpoint"]


class ExperienceCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that keeps ``last.ckpt`` (rewritten at every epoch end, for
    an exact resume after a kill) and one checkpoint per experience end
    (``experience=<i>-epoch=<e>.ckpt``: the model after each task of the stream), instead of one
    per epoch.  A quickstart keeps 3 files instead of 11.

    It is ``ModelCheckpoint(every_n_epochs=<epochs per experience>, save_top_k=-1, save_last=True,
    save_on_train_epoch_end=True)``, with the epochs per experience read from the LightningModule
    (``pl_module.epochs_per_experience()``) at setup; a LightningModule without experiences counts
    every epoch as one.  ``ModelCheckpoint`` writes ``last.ckpt`` only with an experience-end
    checkpoint, so this class writes it at the other epoch ends too (with ``Trainer.save_checkpoint``).

    Args:
        dirpath: folder of the checkpoints (default: ``<run folder>/checkpoints``, as Lightning's).
        filename: name pattern of the experience-end checkpoints (``{experience}`` and ``{epoch}`` are filled in).
        save_last: also write ``last.ckpt`` every epoch (needed to resume).
        save_weights_only: write only the weights (no optimizer, buffer or loop state: cannot resume).
        verbose: log every save.
    """

    def __init__(
        self,
        dirpath: Optional[str] = None,
        filename: str = "{experience}-{epoch}",
        save_last: bool = True,
        save_weights_only: bool = False,
        verbose: bool = False,
    ) -> None:
        self._arguments = dict(dirpath=dirpath, filename=filename, save_last=save_last, save_weights_only=save_weights_only, verbose=verbose)
        #: the LightningModule's ``experience_of_epoch`` while an epoch end is checkpointed
        self._experience_of_epoch: Optional[Callable[[int], int]] = None
        #: global step of the last epoch-end checkpoint (``None``: none yet)
        self._saved_step: Optional[int] = None
        super().__init__(**self._configuration(every_n_epochs=1))

    def _configuration(self, every_n_epochs: int) -> Dict[str, Any]:
        return dict(self._arguments, every_n_epochs=every_n_epochs, save_top_k=-1, save_on_train_epoch_end=True)

    @property
    def state_key(self) -> str:
        # Not ModelCheckpoint's key, which names every_n_epochs: that is set at setup, after the key
        # is first needed, and checkpoints written before it was set hold this key (every_n_epochs=1).
        return f"{type(self).__qualname__}{{'monitor': None, 'mode': 'min', 'every_n_train_steps': 0, 'every_n_epochs': 1, 'train_time_interval': None}}"

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        epochs = pl_module.epochs_per_experience() if callable(getattr(pl_module, "epochs_per_experience", None)) else 1
        if epochs != self.every_n_epochs:
            # every_n_epochs is a constructor argument only: configure anew (setup runs before a
            # resumed checkpoint's state is loaded into this callback, so no state is lost)
            ModelCheckpoint.__init__(self, **self._configuration(every_n_epochs=int(epochs)))
        super().setup(trainer, pl_module, stage)

    def format_checkpoint_name(self, metrics: Dict[str, torch.Tensor], filename: Optional[str] = None, ver: Optional[int] = None, prefix: Optional[str] = None) -> str:
        """As ``ModelCheckpoint``'s, with ``{experience}``: the experience of the checkpoint's epoch."""
        if "epoch" in metrics:
            epoch = int(metrics["epoch"])
            of_epoch = self._experience_of_epoch
            experience = of_epoch(epoch) if callable(of_epoch) else epoch // max(self.every_n_epochs or 1, 1)
            metrics = {**metrics, "experience": torch.tensor(experience)}
        return super().format_checkpoint_name(metrics, filename=filename, ver=ver, prefix=prefix)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        writes = self._may_write(trainer)  # what ModelCheckpoint decides, read before it saves
        self._experience_of_epoch = getattr(pl_module, "experience_of_epoch", lambda epoch: epoch)
        try:
            super().on_train_epoch_end(trainer, pl_module)  # an experience end: experience=<i>-epoch=<e>.ckpt, then last.ckpt
        finally:
            self._experience_of_epoch = None
        if not writes:
            return
        if self.save_last and (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            self._write_last(trainer)
        self._saved_step = trainer.global_step

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._saved_step is None:  # ModelCheckpoint writes last.ckpt here if it wrote none before
            super().on_train_end(trainer, pl_module)

    def _may_write(self, trainer: pl.Trainer) -> bool:
        """Whether a checkpoint is written at this epoch end: not in fast_dev_run, sanity checks or
        outside ``fit``, and not twice at one global step (as ``ModelCheckpoint`` decides)."""
        return not (
            trainer.fast_dev_run
            or trainer.state.fn != TrainerFn.FITTING
            or trainer.sanity_checking
            or trainer.global_step == self._saved_step
        )

    def _write_last(self, trainer: pl.Trainer) -> None:
        """Write ``last.ckpt`` as ``ModelCheckpoint`` does (``last-v1.ckpt`` beside another run's ``last.ckpt``)."""
        metrics = {"epoch": torch.tensor(trainer.current_epoch), "step": torch.tensor(trainer.global_step)}
        filepath = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST)
        version = self.STARTING_VERSION
        while self.file_exists(filepath, trainer) and filepath != self.last_model_path:
            filepath = self.format_checkpoint_name(metrics, self.CHECKPOINT_NAME_LAST, ver=version)
            version += 1
        # the path is part of the saved state: set it first
        previous, self.last_model_path = self.last_model_path, filepath
        trainer.save_checkpoint(filepath, self.save_weights_only)
        if trainer.is_global_zero:
            for logger in trainer.loggers:
                logger.after_save_checkpoint(proxy(self))
        if previous and previous != filepath and self._own(previous, trainer):
            trainer.strategy.remove_checkpoint(previous)

    def _own(self, path: str, trainer: pl.Trainer) -> bool:
        """Whether a replaced ``last`` file is this callback's to delete: in its folder, and not the checkpoint the run resumed from."""
        resumed = trainer.ckpt_path is not None and Path(trainer.ckpt_path).absolute() == Path(path).absolute()
        return not resumed and Path(os.fspath(self.dirpath)).absolute() in Path(path).absolute().parents
