"""Random state that depends only on the run's seed and the position in the stream.

A continual run must give the same numbers whether it ran in one go or was killed and resumed
from a checkpoint, and whatever domains come later in the stream.  Lightning's
``seed_everything`` seeds the global generators once, at start-up, so every later draw depends on
everything that drew before it: a resumed run (re-seeded at start-up, with a different history)
and a stream with one more domain (whose validation loader draws a base seed every epoch) drift
apart.  MedCL therefore

* re-seeds the global generators (Python, NumPy, torch) at the start of every training epoch from
  ``(seed, epoch)`` (:func:`seed_epoch`, called by the paradigms), and
* gives every DataLoader it builds its own generator seeded from ``(seed, task, split, epoch)``
  (:func:`loader_generator`), so loaders never draw from the global generator.

``seed`` is the run's ``seed_everything`` value (Lightning keeps it in ``PL_GLOBAL_SEED``).  A run
without one (``seed_everything: false`` or a bare ``Trainer``) keeps PyTorch's usual behaviour.
Epoch-end checkpoints (MedCL's configs write only those) then resume exactly; a checkpoint written
in the middle of an epoch resumes that epoch from its start.

Lightning's seeding utilities set the environment and log on every call, and its DataLoader
re-seeding applies to worker processes only, hence this small module.
"""
from __future__ import annotations

import os
import random
import zlib
from typing import Optional

import numpy as np
import torch
from torch.utils.data import RandomSampler

__all__ = ["run_seed", "derived_seed", "seed_epoch", "loader_generator", "loader_sampling", "ReseededRandomSampler"]


def run_seed() -> Optional[int]:
    """The run's seed (``seed_everything``), or ``None`` if the run was not seeded.

    Raises:
        ValueError: if ``PL_GLOBAL_SEED`` is set but is not an integer.
    """
    value = os.environ.get("PL_GLOBAL_SEED")
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable PL_GLOBAL_SEED expected an integer seed, found {value!r}") from None


def derived_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed from ``seed`` and any keys (stable across processes and Python versions)."""
    text = "|".join(str(k) for k in (seed, *keys)).encode()
    return (zlib.crc32(text) << 31 | zlib.adler32(text)) & 0x7FFF_FFFF_FFFF_FFFF


def seed_epoch(epoch: int) -> Optional[int]:
    """Re-seed Python, NumPy and torch (CPU and CUDA) for training epoch ``epoch``; no-op without a run seed.

    Returns:
        the seed used, or ``None`` if the run is not seeded.
    """
    seed = run_seed()
    if seed is None:
        return None
    value = derived_seed(seed, "epoch", epoch)
    random.seed(value)
    np.random.seed(value % 2**32)
    torch.manual_seed(value)  # also seeds every CUDA device
    return value


def loader_sampling(dataset, shuffle: bool, *keys: object) -> dict:
    """DataLoader keyword arguments for ``dataset``: a :class:`ReseededRandomSampler` (if
    ``shuffle``) seeded from the run seed and ``keys``, and a generator for the workers' base seeds.
    Without a run seed, PyTorch's defaults (``shuffle``, global generator)."""
    generator = loader_generator(*keys)
    if generator is None or not shuffle:
        return {"shuffle": shuffle, "generator": generator}
    return {"sampler": ReseededRandomSampler(dataset, derived_seed(run_seed(), "order", *keys)), "generator": generator}


def loader_generator(*keys: object) -> Optional[torch.Generator]:
    """A generator for one DataLoader, seeded from the run seed and ``keys`` (``None`` without a run seed).

    The DataLoader draws its shuffle order and its workers' base seed from it instead of from the
    global generator.
    """
    seed = run_seed()
    if seed is None:
        return None
    return torch.Generator().manual_seed(derived_seed(seed, "loader", *keys))


class ReseededRandomSampler(RandomSampler):
    """A ``RandomSampler`` that restarts its generator from ``seed`` at every iteration.

    A plain ``RandomSampler`` with a generator gives a new order each time it is iterated, so the
    order of an epoch would depend on how often the loader was iterated before (Lightning iterates
    a freshly restored loader at other moments than a running one).  Under DDP Lightning replaces
    it, as any ``RandomSampler``, by a ``DistributedSampler`` seeded by epoch.

    Args:
        data_source: the dataset.
        seed: the seed of every iteration's order.
    """

    def __init__(self, data_source, seed: int) -> None:
        super().__init__(data_source, generator=torch.Generator())
        self.seed = int(seed)

    def __iter__(self):
        self.generator.manual_seed(self.seed)
        return super().__iter__()
