"""Base class for one imaging domain.  Adding a modality = subclassing :class:`DomainDataModule`.

A domain data module describes its task with a :class:`~framework.core.specs.TaskSpec` and serves
``train``/``val``/``test`` datasets whose items are ``{"image": uint8 tensor (0..255) or float
tensor in [0, 1], "target": ...}`` (``[C, H, W]``, or ``[C, D, H, W]`` for volumes).  Images from
a uint8 source stay uint8 (value ``v`` means ``v / 255``) so that batches, and replay exemplars
stored as the data provided them, take a quarter of the memory; the backbone converts them to
float in :meth:`~framework.backbone.CLIPBackbone.prepare_images`.  Other sources (uint16, float
NIfTI, synthetic data) are served as float32 in ``[0, 1]``.  Batches reaching the model are always
keyed by task name: ``{task: {"image": ..., "target": ...}}``.
"""
from __future__ import annotations

import functools
from abc import abstractmethod
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.utilities import CombinedLoader
from torch.utils.data import DataLoader, Dataset, Subset, default_collate

from framework.core.seeding import loader_sampling
from framework.core.specs import TaskSpec

__all__ = ["DomainDataModule", "SPLITS", "keyed_collate", "check_subset_sizes", "subset_indices", "limit_batches", "trainer_limited"]

SPLITS = ("train", "val", "test")


def check_subset_sizes(
    owner: str, train_subset: Optional[int], val_subset: Optional[int], test_subset: Optional[int]
) -> Dict[str, Optional[int]]:
    """Validate the ``*_subset`` arguments of a data module and return them keyed by split.

    Raises:
        ValueError: ``"<owner>: <split>_subset expected None or a positive integer, found <value>"``.
    """
    sizes = {"train": train_subset, "val": val_subset, "test": test_subset}
    for split, value in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{owner}: {split}_subset expected None or a positive integer, found {value!r}")
    return sizes


def subset_indices(
    sizes: Mapping[str, Optional[int]],
    lengths: Mapping[str, int],
    seed: int,
    owner: str,
    source: Any,
    items: str = "'{split}_images'",
) -> Dict[str, Optional[np.ndarray]]:
    """Sorted random indices of the subset of each split (``None`` where the split is used whole).

    One ``numpy.random.default_rng(seed)`` draws split by split in :data:`SPLITS` order, and only for
    splits with a size, so a given seed always selects the same samples in every module that uses it
    (the semi-synthetic survival domain relies on picking the same images as the MedMNIST one).

    Args:
        sizes: subset size per split (``None`` = all samples).
        lengths: number of samples per split.
        seed: seed of the draw.
        owner: who is asking, for error messages (e.g. ``"MedMNISTDataModule(bloodmnist)"``).
        source: the file or folder the samples come from, for error messages.
        items: what the samples are called in error messages; ``{split}`` is replaced by the split.

    Raises:
        ValueError: if a subset is larger than its split, naming the argument, both sizes and ``source``.
    """
    rng = np.random.default_rng(seed)
    indices: Dict[str, Optional[np.ndarray]] = {}
    for split in SPLITS:
        size, n = sizes[split], lengths[split]
        if size is None:
            indices[split] = None
            continue
        if size > n:
            raise ValueError(f"{owner}: {split}_subset={size} is larger than the {n} {items.format(split=split)} in {source}")
        indices[split] = np.sort(rng.choice(n, size=size, replace=False))
    return indices


def limit_batches(loader: DataLoader, limit: Any, field: str) -> DataLoader:
    """``loader`` cut to its first batches the way Lightning reads a ``limit_*_batches`` value:
    an int is a number of batches, a float a fraction of them (at least one batch), ``None`` or
    ``1.0`` everything.  Used by evaluation outside the Lightning loops (the experience-end
    matrix), so a debug preset limits it too.

    Raises:
        ValueError: naming ``field`` if ``limit`` is negative, a fraction above 1, or not a number.
    """
    if limit is None:
        return loader
    if isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit < 0 or (isinstance(limit, float) and limit > 1.0):
        raise ValueError(f"{field} expected an int >= 0 (batches) or a float in [0, 1] (fraction), found {limit!r}")
    n = len(loader)
    keep = min(n, int(limit)) if isinstance(limit, int) else int(n * limit)
    keep = max(1, keep)
    if keep >= n:
        return loader
    return DataLoader(
        Subset(loader.dataset, range(min(len(loader.dataset), keep * loader.batch_size))),
        batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        generator=loader.generator,
    )


def trainer_limited(trainer: Optional[pl.Trainer], loader: DataLoader, split: str) -> DataLoader:
    """:func:`limit_batches` with the trainer's ``limit_<split>_batches`` (``limit_val_batches`` for
    ``"val"``); ``loader`` unchanged without a trainer."""
    if trainer is None:
        return loader
    field = {"train": "limit_train_batches", "val": "limit_val_batches", "test": "limit_test_batches"}[split]
    return limit_batches(loader, getattr(trainer, field, None), f"trainer.{field}")


def single_sample_last_batches(datamodule) -> List[str]:
    """The training domains of ``datamodule`` (a stream or one domain) whose training split leaves a
    last batch of exactly one sample (and do not drop it), as ``"name (N training samples, batch_size B)"``."""
    out = []
    for domain in getattr(datamodule, "domains", [datamodule]):
        if not isinstance(domain, DomainDataModule) or domain.drop_last:
            continue
        n = len(domain.dataset("train"))
        if n % domain.batch_size == 1:
            out.append(f"{domain.name} ({n} training samples, batch_size {domain.batch_size})")
    return out


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
        drop_last: drop the last, incomplete training batch of every epoch (needed when a split's
            size leaves a single sample over and the model has BatchNorm layers, e.g. a ResNet
            tower, which cannot normalise one sample in training mode).

    Raises:
        ValueError: on non-positive batch sizes or negative worker counts.
    """

    def __init__(self, batch_size: int = 64, eval_batch_size: Optional[int] = None, num_workers: int = 0, drop_last: bool = False) -> None:
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
        if not isinstance(drop_last, bool):
            raise ValueError(f"{type(self).__name__}: drop_last expected true or false, found {drop_last!r}")
        self.drop_last = drop_last
        #: DataLoader settings a stream may set for every domain (:meth:`configure_loader`)
        self.pin_memory = False
        self.persistent_workers = False

    def configure_loader(self, num_workers: Optional[int] = None, pin_memory: Optional[bool] = None,
                         persistent_workers: Optional[bool] = None) -> None:
        """Set DataLoader settings (``None`` keeps a setting); :class:`~data_modules.DomainStream`'s ``loader`` calls it.

        Raises:
            ValueError: on a negative ``num_workers`` or non-bool flags, naming the domain and field.
        """
        where = f"{type(self).__name__}({self.name})"
        if num_workers is not None:
            if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
                raise ValueError(f"{where}: loader field 'num_workers' expected an integer >= 0, found {num_workers!r}")
            self.num_workers = num_workers
        for field, value in (("pin_memory", pin_memory), ("persistent_workers", persistent_workers)):
            if value is not None:
                if not isinstance(value, bool):
                    raise ValueError(f"{where}: loader field {field!r} expected true or false, found {value!r}")
                setattr(self, field, value)

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

    def single_sample_last_batches(self) -> List[str]:
        """This domain, if its last training batch holds one sample (the framework's BatchNorm check reads this)."""
        return single_sample_last_batches(self)

    def loader(self, split: str, keyed: bool = True, shuffle: Optional[bool] = None, epoch: int = 0) -> DataLoader:
        """A DataLoader over ``split``; ``keyed=True`` wraps each batch as ``{task: batch}``.

        Its shuffle order comes from its own generator, seeded from the run seed, the task, the
        split and ``epoch`` (:func:`framework.core.seeding.loader_sampling`), never from the global one.

        Raises:
            ValueError: for an unknown split, or a split without samples (naming the domain and split).
        """
        if split not in SPLITS:
            raise ValueError(f"{type(self).__name__}: split expected one of {list(SPLITS)}, found {split!r}")
        train = split == "train"
        dataset = self.dataset(split)
        if len(dataset) == 0:
            raise ValueError(
                f"{type(self).__name__}({self.name}): the {split} split expected at least one sample, found 0 "
                f"(check the data source of this domain and its {split}_subset)"
            )
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            **loader_sampling(dataset, train if shuffle is None else shuffle, self.name, split, epoch),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
            collate_fn=functools.partial(keyed_collate, task=self.name) if keyed else None,
            drop_last=self.drop_last and train,
        )

    def train_dataloader(self):
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return CombinedLoader({self.name: self.loader("train", keyed=False, epoch=epoch)}, mode="max_size_cycle")

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
        """Keyed loader for ``task`` (must be this domain's task), cut to the trainer's ``limit_<split>_batches``."""
        if task != self.name:
            raise KeyError(f"{type(self).__name__} serves task {self.name!r}, not {task!r}")
        return trainer_limited(self.trainer, self.loader(split), split)
