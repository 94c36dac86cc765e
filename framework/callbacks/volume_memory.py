"""How volumes go through a 2D image tower: slices per micro-batch, and recomputation in training.

:class:`VolumeMemory` sets the backbone's ``slice_batch_size`` and ``checkpoint_slices``
(:mod:`framework.backbone.slices`) before any fit, validation, test or predict loop, so one line
of a config bounds a CT run's memory::

    trainer:
      callbacks:
        - class_path: framework.callbacks.VolumeMemory
          init_args: {slice_batch_size: 16, checkpoint_slices: true}

Without it, slices go through the tower 32 at a time and activations are kept for the backward
pass (the fastest choice when memory allows).  The settings change memory and speed only, never
results: a micro-batched or recomputed forward pass equals the one-batch pass up to float rounding
(tested in tests/test_volume_memory.py).
"""
from __future__ import annotations

from typing import Optional

import pytorch_lightning as pl

from framework.backbone.slices import DEFAULT_SLICE_BATCH_SIZE, check_slice_settings
from framework.callbacks.every_loop import EveryLoopCallback

__all__ = ["VolumeMemory"]


class VolumeMemory(EveryLoopCallback):
    """Set how many volume slices go through the image tower at once, and whether they are recomputed in backward.

    Args:
        slice_batch_size: slices per micro-batch (over the whole batch of volumes).
        checkpoint_slices: in training, recompute each micro-batch's activations in the backward
            pass (``torch.utils.checkpoint``) instead of keeping them: peak memory then holds one
            micro-batch of activations, at the cost of a second forward pass.

    Raises:
        ValueError: on a ``slice_batch_size`` that is not a positive integer, or a non-bool ``checkpoint_slices``.
    """

    def __init__(self, slice_batch_size: int = DEFAULT_SLICE_BATCH_SIZE, checkpoint_slices: bool = False) -> None:
        check_slice_settings(slice_batch_size, checkpoint_slices, "VolumeMemory")
        self.slice_batch_size = slice_batch_size
        self.checkpoint_slices = checkpoint_slices

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: Optional[str] = None) -> None:
        self.apply(pl_module)

    def apply(self, pl_module: pl.LightningModule) -> None:
        if not hasattr(pl_module, "all_models"):
            raise ValueError(f"VolumeMemory: expected a MedCL paradigm module (framework.paradigms), found {type(pl_module).__name__}")
        backbones = [getattr(m, "backbone", None) for m in pl_module.all_models()]  # none yet: specialised learning before its first task
        if any(b is None or not hasattr(b, "slice_batch_size") for b in backbones):
            raise ValueError(
                f"VolumeMemory: expected a MedCL paradigm module (framework.paradigms) whose models have a backbone, found "
                f"{type(pl_module).__name__}"
            )
        for backbone in backbones:
            backbone.slice_batch_size = self.slice_batch_size
            backbone.checkpoint_slices = self.checkpoint_slices
