"""Base class for one imaging domain.  Adding a modality = subclassing :class:`DomainDataModule`.

A domain data module describes its task with a :class:`~framework.specs.TaskSpec` and serves
``train``/``val``/``test`` datasets whose items are ``{"image": FloatTensor[C, H, W] in [0, 1],
"target": ...}``.  Batches reaching the model are always keyed by task name:
``{task: {"image": ..., "target": ...}}``.
"""
from __future__ import annotations

import functools
from abc import abstractmethod
from typing import Any, Dict, List, Mapping, Optional, Sequence

import pytorch_lightning as pl
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, default_collate

from framework.specs import TaskSpec

__all__ = ["DomainDataModule", "SPLITS", "keyed_collate"]

SPLITS = ("train", "val", "test")


def keyed_collate(items: Sequence[Mapping[str, Any]], task: str) -> Dict[str, Dict[str, Any]]:
    """Collate samples of one task into ``{task: {"image": ..., "target": ...}}``."""
    return {task: default_collate(items)}


class DomainDataModule(pl.LightningDataModule):
    """One domain of a stream (e.g. BloodMNIST).

    Subclasses implement :attr:`task_spec` and :meth:`dataset`.

    Args:
        batch_size: training batch size.
        eval_batch_size: batch size for validation/test (defaults to ``2 * batch_size``).
        num_workers: DataLoader worker processes.

    Raises:
        ValueError: on non-positive batch sizes or negative worker counts.
    """

    def __init__(self, batch_size: int = 64, eval_batch_size: Optional[int] = None, num_workers: int = 0) -> None:
        super().__init__()
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"{type(self).__name__}: batch_size expected a positive integer, found {batch_size!r}")
        if eval_batch_size is not None and (not isinstance(eval_batch_size, int) or eval_batch_size < 1):
            raise ValueError(f"{type(self).__name__}: eval_batch_size expected a positive integer, found {eval_batch_size!r}")
        if not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"{type(self).__name__}: num_workers expected an integer >= 0, found {num_workers!r}")
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or 2 * batch_size
        self.num_workers = num_workers

    # ------------------------------------------------------------------ what subclasses provide
    @property
    @abstractmethod
    def task_spec(self) -> TaskSpec:
        """The task this domain provides (known before ``setup``)."""

    @abstractmethod
    def dataset(self, split: str) -> Dataset:
        """The dataset of ``split`` (one of :data:`SPLITS`), available after ``setup``."""

    # ------------------------------------------------------------------ shared
    @property
    def name(self) -> str:
        return self.task_spec.name

    @property
    def task_specs(self) -> List[TaskSpec]:
        return [self.task_spec]

    def loader(self, split: str, keyed: bool = True, shuffle: Optional[bool] = None) -> DataLoader:
        """A DataLoader over ``split``; ``keyed=True`` wraps each batch as ``{task: batch}``.

        Raises:
            ValueError: for an unknown split.
        """
        if split not in SPLITS:
            raise ValueError(f"{type(self).__name__}: split expected one of {list(SPLITS)}, found {split!r}")
        train = split == "train"
        return DataLoader(
            self.dataset(split),
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train if shuffle is None else shuffle,
            num_workers=self.num_workers,
            persistent_workers=False,
            collate_fn=functools.partial(keyed_collate, task=self.name) if keyed else None,
            drop_last=False,
        )

    def train_dataloader(self):
        return CombinedLoader({self.name: self.loader("train", keyed=False)}, mode="max_size_cycle")

    def val_dataloader(self):
        return self.loader("val")

    def test_dataloader(self):
        return self.loader("test")

    def predict_dataloader(self):
        return self.loader("test")

    def reference_scores(self, split: str) -> Dict[str, float]:
        """Reference numbers to report beside the model's (e.g. an oracle score of simulated data); none by default."""
        return {}

    def eval_dataloader(self, task: str, split: str = "test") -> DataLoader:
        """Keyed loader for ``task`` (must be this domain's task)."""
        if task != self.name:
            raise KeyError(f"{type(self).__name__} serves task {self.name!r}, not {task!r}")
        return self.loader(split)
