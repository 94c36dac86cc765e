"""The checkpoint a finished stage hands to the next one (``experiments/unicon/``)."""
from __future__ import annotations

import os
from pathlib import Path

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info

__all__ = ["StageCheckpoint"]


class StageCheckpoint(pl.Callback):
    """Write the model to a fixed ``path`` when ``fit`` finishes, and only then.

    A later stage grows this file with ``init_from``.  ``ModelCheckpoint(filename=..., save_top_k=1)``
    rewrites such a file after every epoch, so a re-run of the stage killed after one epoch used
    to leave a 1-epoch model where the finished stage's was, and the next stage grew it without a
    word.  Here a stage that fails or is killed never touches ``path``; a finished re-run keeps the
    earlier finished checkpoint as ``<stem>-v<k>.ckpt`` before writing its own (written atomically,
    see :class:`framework.core.checkpoints.AtomicCheckpointIO`).

    Args:
        path: the stage checkpoint, e.g. ``runs/unicon/checkpoints/02_prognosis.ckpt``.

    Raises:
        ValueError: if ``path`` does not end in ``.ckpt``.
    """

    def __init__(self, path: str) -> None:
        if not isinstance(path, (str, os.PathLike)) or not str(path).endswith(".ckpt"):
            raise ValueError(f"StageCheckpoint: path expected a file name ending in .ckpt, found {path!r}")
        self.path = Path(path)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or getattr(trainer, "fast_dev_run", False):
            return
        if trainer.is_global_zero and self.path.exists():
            k = 1
            while (kept := self.path.with_name(f"{self.path.stem}-v{k}{self.path.suffix}")).exists():
                k += 1
            os.replace(self.path, kept)
            rank_zero_info(f"StageCheckpoint: the earlier finished stage checkpoint is kept as {kept}")
        trainer.strategy.barrier()
        trainer.save_checkpoint(self.path)  # every rank calls it; rank 0 writes
        rank_zero_info(f"StageCheckpoint: finished stage written to {self.path}")
