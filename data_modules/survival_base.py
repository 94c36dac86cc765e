"""Shared parts of the survival (prognosis) data modules of :mod:`data_modules.survival`.

Holds the in-memory dataset of ``(image, (time, event))`` items, the quantile time bins of the
training split, Harrell's C-index over whole arrays, two small argument/file helpers and
``_SurvivalDomain``, the base class of both survival data modules (lazily built
:class:`~framework.core.specs.TaskSpec`, datasets per split, reference scores, degenerate-split warning).
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from data_modules.base import SPLITS, DomainDataModule
from framework.core.specs import TaskSpec

__all__ = ["SurvivalImageDataset", "survival_time_bins", "harrell_c_index"]


class SurvivalImageDataset(Dataset):
    """Images held in memory, channels first, with their ``(time, event)`` targets.

    Items are ``{"image": Tensor[C, *spatial], "target": FloatTensor[2]}``; uint8 images are served
    as uint8 (0..255), others as float32; items are copies, so callers may modify them in place.

    Args:
        images: ``(N, C, *spatial)`` array, uint8 (``v`` means ``v / 255``, served as uint8) or
            float32 in [0, 1].
        times: ``(N,)`` follow-up times.
        events: ``(N,)`` event indicators (1 = event observed, 0 = censored).
    """

    def __init__(self, images: np.ndarray, times: np.ndarray, events: np.ndarray) -> None:
        if not len(images) == len(times) == len(events):
            raise ValueError(f"SurvivalImageDataset: {len(images)} images, {len(times)} times, {len(events)} events")
        self.images = images
        self.targets = torch.as_tensor(np.stack([times, events], axis=1), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        image = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        # copies, so callers may modify items in place without touching the stored data
        image = image.clone() if image.dtype == torch.uint8 else image.to(torch.float32, copy=True)
        return {"image": image, "target": self.targets[index]}


def survival_time_bins(times: np.ndarray, events: np.ndarray, num_time_bins: int, source: str) -> Tuple[float, ...]:
    """Quantile cut points of the Kaplan-Meier curve (pycox ``LabTransDiscreteTime``, ``scheme="quantiles"``).

    The first cut is 0 and the last the largest time; duplicates are dropped, so fewer than
    ``num_time_bins`` cuts come back when times are heavily tied.

    Raises:
        ValueError: if ``events`` holds no observed event (no survival curve to cut), naming ``source``.
    """
    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events, dtype=np.float64)
    if not events.any():
        raise ValueError(
            f"{source}: field 'event' of the training split expected at least one observed event (1) to derive "
            f"time bins, found {len(events)} censored samples and no event"
        )
    from pycox.preprocessing.label_transforms import LabTransDiscreteTime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycox warns when it drops duplicate cuts; we dedupe anyway
        try:
            cuts = LabTransDiscreteTime(num_time_bins, scheme="quantiles").fit(times, events).cuts
        except (AssertionError, ValueError) as err:
            raise ValueError(f"{source}: could not derive time bins from the training times ({err})") from None
    cuts = np.unique(np.asarray(cuts, dtype=np.float64))
    return tuple(float(c) for c in cuts)


def harrell_c_index(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Harrell's C-index of ``risk`` (higher = earlier event): MedCL's torchsurv-backed
    :class:`~framework.metrics.ConcordanceIndex` over whole arrays.

    Ties in risk count 1/2; only pairs whose earlier time is an observed event are comparable.
    Returns ``nan`` when no event is observed.
    """
    from framework.metrics import ConcordanceIndex

    metric = ConcordanceIndex()
    target = np.stack([np.asarray(time, dtype=np.float64), np.asarray(event, dtype=np.float64)], axis=1)
    metric.update(torch.as_tensor(np.asarray(risk, dtype=np.float64)), torch.as_tensor(target))
    return float(metric.compute())


def npy_header(archive, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape and dtype of ``key`` in an open ``.npz`` without reading the array."""
    with archive.zip.open(f"{key}.npy") as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            return tuple(shape), dtype
        if version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            return tuple(shape), dtype
    array = archive[key]
    return array.shape, array.dtype


def check_int_arg(owner: str, name: str, value, minimum: int) -> None:
    """Check an integer argument.

    Raises:
        ValueError: naming ``owner`` and ``name`` unless ``value`` is an integer (not a bool) >= ``minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: {name} expected an integer >= {minimum}, found {value!r}")


# ---------------------------------------------------------------------------------------------- base
class _SurvivalDomain(DomainDataModule):
    """Shared parts: lazily built spec, datasets per split, reference scores."""

    def __init__(self, spec: TaskSpec, num_time_bins: int, batch_size: int, eval_batch_size: Optional[int], num_workers: int, drop_last: bool = False) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, drop_last=drop_last)
        check_int_arg(type(self).__name__, "num_time_bins", num_time_bins, 2)
        self.num_time_bins = int(num_time_bins)
        self._base_spec = spec
        self._spec: Optional[TaskSpec] = None
        self._datasets: Dict[str, SurvivalImageDataset] = {}

    def _survival(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(times, events)`` of the samples served for ``split`` (no images needed)."""
        raise NotImplementedError

    def _source(self) -> str:
        raise NotImplementedError

    def survival(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(times, events)`` of the samples of ``split`` in dataset order (available before ``setup``)."""
        self._check_split(split)
        time, event = self._survival(split)
        return time.copy(), event.copy()

    @property
    def task_spec(self) -> TaskSpec:
        if self._spec is None:
            times, events = self._survival("train")
            bins = survival_time_bins(times, events, self.num_time_bins, self._source())
            self._spec = dataclasses.replace(self._base_spec, time_bins=bins)
        return self._spec

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"{type(self).__name__}: split expected one of {list(SPLITS)}, found {split!r}")

    def dataset(self, split: str) -> SurvivalImageDataset:
        self._check_split(split)
        if not self._datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for datasets")
        return self._datasets[split]

    def reference_scores(self, split: str) -> Dict[str, float]:
        """Extra reference numbers for the evaluation report of ``split`` (none here)."""
        self._check_split(split)
        return {}

    def _warn_if_degenerate(self) -> None:
        """One warning (per ``setup``) naming every split whose times are all 0 or that holds no event.

        A training split without events is refused earlier (:func:`survival_time_bins`).
        """
        problems = []
        for split in SPLITS:
            time, event = self._survival(split)
            if len(time) and not np.any(time > 0):
                problems.append(f"every time in the '{split}' split is 0 ({len(time)} samples)")
            if len(event) and not np.any(event > 0):
                problems.append(f"the '{split}' split holds no event ({len(event)} samples, all censored)")
        if problems:
            rank_zero_warn(
                f"{type(self).__name__}({self._base_spec.name}): {'; '.join(problems)}; such a split has no comparable pair "
                f"(its C-index is undefined) and teaches a model nothing: check the survival data ({self._source()})"
            )
