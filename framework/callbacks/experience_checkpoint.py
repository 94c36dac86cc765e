"""Checkpoints a continual run needs, and no more: ``last.ckpt`` every epoch, one per experience end."""
from __future__ import annotations

from typing import Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.callbacks import ModelCheckpoint

__all__ = ["ExperienceCheckpoint"]


class ExperienceCheckpoint(ModelCheckpoint):
    """Lightning's ``ModelCheckpoint`` that keeps ``last.ckpt`` (rewritten at every epoch end, for
    an exact resume after a kill) and one checkpoint per experience end
    (``experience=<i>-epoch=<e>.ckpt``: the model after each task of the stream), instead of one
    per epoch.  A quickstart keeps 3 files instead of 11.

    ``ModelCheckpoint`` can save every ``n`` epochs, but an experience end is the paradigm's notion
    (``is_last_epoch_of_experience``), so this subclass asks the paradigm; it uses
    ``ModelCheckpoint``'s own saving methods (private in Lightning, hence pinned versions).
    With a LightningModule that has no experiences, every epoch end counts as one.

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
        super().__init__(
            dirpath=dirpath, filename=filename, save_last=save_last, save_weights_only=save_weights_only, verbose=verbose,
            save_top_k=-1, save_on_train_epoch_end=True,
        )

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._should_skip_saving_checkpoint(trainer):
            return
        epoch = trainer.current_epoch
        candidates = self._monitor_candidates(trainer)
        ends = getattr(pl_module, "is_last_epoch_of_experience", None)
        if not callable(ends) or ends(epoch):
            experience = getattr(pl_module, "experience_of_epoch", lambda e: e)(epoch)
            candidates["experience"] = torch.tensor(experience)
            self._save_topk_checkpoint(trainer, candidates)
        self._save_last_checkpoint(trainer, candidates)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Saved at training-epoch ends only (after the experience-end evaluation)."""
