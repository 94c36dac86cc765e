"""The module's own strategy that grows the task router: it learns each new image source at the end
of the experience that trains it, before the experience-end evaluation reads the router."""
from __future__ import annotations

import logging
from typing import List, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from framework.core.data_protocol import domain_for
from framework.strategies.base import Strategy

__all__ = ["RouterFitting"]

log = logging.getLogger(__name__)


class RouterFitting(Strategy):
    """Learn every image source new in an experience: encode (at most ``samples_per_source``, drawn
    with the router's seed) of its training images and its validation images with the router's
    frozen features, fit the router kind, and calibrate the source's unknown threshold.

    Built by the module when ``model.init_args.router`` is set; never listed under ``trainer.callbacks``.
    """

    #: runs before the trainer's callbacks in after_experience (framework/strategies/runner.py)
    prepares_evaluation = True

    def check_module(self, module: pl.LightningModule) -> None:
        models = module.all_models()
        if len(models) != 1:
            raise ValueError(
                f"{type(module).__name__}: a task router needs one model shared by every task (ContinualModule or JointModule); "
                f"this paradigm builds one model per task: set router: null"
            )

    @staticmethod
    def _encode(router, loader: DataLoader, device: torch.device) -> Tensor:
        features = [router.features(batch["image"].to(device)).cpu() for batch in loader]
        return torch.cat(features) if features else torch.empty(0)

    def _loader(self, datamodule, task: str, split: str, limit: Optional[int], seed: int) -> DataLoader:
        base = domain_for(datamodule, task, "the task router").loader(split, keyed=False, shuffle=False)
        dataset = base.dataset
        if limit is not None and len(dataset) > limit:
            keep = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
            dataset = Subset(dataset, keep.tolist())
        return DataLoader(dataset, batch_size=base.batch_size, shuffle=False, num_workers=0, collate_fn=base.collate_fn)

    def after_experience(self, trainer: pl.Trainer, module: pl.LightningModule, experience: int, tasks: List[str]) -> None:
        (model,) = module.all_models()
        router = model.router
        datamodule = trainer.datamodule
        device = next(router.features.parameters()).device
        new = []
        for task in tasks:
            source = module.task_specs[task].source
            router.add_task(task, source)
            if source not in router.sources and source not in [s for s, _ in new]:
                new.append((source, task))
        for source, task in new:
            train = self._encode(router, self._loader(datamodule, task, "train", router.samples_per_source, router.seed), device)
            try:
                val = self._encode(router, self._loader(datamodule, task, "val", router.samples_per_source, router.seed), device)
            except ValueError:  # a domain without a validation split
                log.warning("task router: %s has no validation images; its unknown threshold is calibrated on training images (optimistic)", task)
                val = train
            threshold = router.learn(source, train, val)
            log.info("task router: learned source %r (tasks %s) from %d training images; unknown threshold %.4f",
                     source, router.tasks_of[source], train.shape[0], threshold)

    def describe(self) -> str:
        return "RouterFitting (learns each new image source at the end of its experience)"
