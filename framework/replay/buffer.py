"""Tensor-backed rehearsal storage: a budget of exemplars on the CPU.

Every task has its own preallocated tensors, one per stored field (``image``, ``target``, and what a
strategy stores beside them, e.g. DER++'s logits; :mod:`framework.replay.storage`), in the dtype the
data provided (uint8 images stay uint8).  Rows ``0 .. size-1`` hold the task's samples; an evicted row
is filled by moving the task's last row into the hole, so insertion, eviction and sampling touch
only the rows they read or write: the work of one training step (offer a batch, draw a replay
batch) does not grow with the buffer's capacity.

*Which* samples are kept is decided by a storage policy (:mod:`framework.replay.policies`, or a
user's, registered in :data:`~framework.core.registry.POLICIES`); it plans its decisions on a
:class:`~framework.replay.plan.BatchPlan` and the buffer executes them with vectorised
``index_copy_`` / ``index_select`` per task.  Replay batches are drawn by :mod:`framework.replay.sampling`,
the checkpoint state is :mod:`framework.replay.buffer_state`.  What stays here (budget, insertion,
eviction, row moves) keeps one invariant, the sizes and rows of every task against the capacity,
which is why this file is a little over 350 lines.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from framework.core.registry import POLICIES
from framework.replay.plan import BatchPlan
from framework.replay.policies import StoragePolicy
from framework.replay.sampling import BALANCE_MODES, choose, draw
from framework.replay.buffer_state import STATE_FORMAT, BufferStateMixin
from framework.replay.storage import TaskStore, sample_bytes

__all__ = ["ReplayBuffer", "BatchPlan", "STATE_FORMAT", "BALANCE_MODES"]

_MIN_ROWS = 64  # allocations are not shrunk below this many rows


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


class ReplayBuffer(BufferStateMixin):
    """A budget of stored exemplars on the CPU: ``(task, image, target)`` and any field a strategy stores with them.

    Args:
        capacity: budget in samples, all tasks together; or
        max_mb: budget in megabytes (2**20 bytes) of stored data (image, target and extra fields): the capacity in samples is
            ``floor(max_mb * 2**20 / b)``, ``b`` the largest per-sample size seen so far, so it
            shrinks (and the policy evicts) when a larger kind of sample arrives.  Exactly one of
            ``capacity`` and ``max_mb`` is given.
        policy: a :class:`~framework.replay.policies.StoragePolicy` instance, a registered policy name
            (:data:`~framework.core.registry.POLICIES`) or a ``class_path`` (default ``"reservoir"``).
        seed: seed of the buffer's own generator (insertion and sampling).
        task_quota: optional maximum samples per named task; a task at its quota only replaces its
            own samples.

    Raises:
        ValueError: on a budget that is not exactly one positive ``capacity`` or ``max_mb``, an
            unknown policy, a ``task_quota`` that is not a mapping of task names to positive
            integers, or a non-integer seed.
    """

    def __init__(
        self,
        capacity: Optional[int] = None,
        policy: Union[str, StoragePolicy, None] = "reservoir",
        seed: int = 0,
        *,
        max_mb: Optional[float] = None,
        task_quota: Optional[Mapping[str, int]] = None,
    ) -> None:
        if (capacity is None) == (max_mb is None):
            raise ValueError(
                f"ReplayBuffer: expected exactly one budget, capacity (samples) or max_mb (megabytes), found capacity={capacity!r}, max_mb={max_mb!r}"
            )
        if capacity is not None and not _positive_int(capacity):
            raise ValueError(f"ReplayBuffer: capacity expected a positive integer, found {capacity!r}")
        if max_mb is not None and (isinstance(max_mb, bool) or not isinstance(max_mb, (int, float)) or not math.isfinite(max_mb) or max_mb <= 0):
            raise ValueError(f"ReplayBuffer: max_mb expected a positive number of megabytes, found {max_mb!r}")
        if policy is None:
            policy = "reservoir"
        if isinstance(policy, str):
            policy = POLICIES.get(policy, where="ReplayBuffer: policy")()
        if not isinstance(policy, StoragePolicy):
            raise ValueError(f"ReplayBuffer: policy expected one of {POLICIES.names()}, a class_path or a StoragePolicy, found {type(policy).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"ReplayBuffer: seed expected an integer, found {seed!r}")
        self.task_quota = self.check_task_quota(task_quota, "ReplayBuffer")
        #: configured budget in samples (None when the budget is ``max_mb``)
        self.budget_capacity: Optional[int] = capacity
        self.max_mb: Optional[float] = None if max_mb is None else float(max_mb)
        #: effective capacity in samples; with ``max_mb``, None until the first sample arrives
        self.capacity: Optional[int] = capacity
        #: largest per-sample bytes (image + target) seen so far
        self.sample_bytes = 0
        self.policy = policy
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed)
        self._stores: Dict[str, TaskStore] = {}
        self._size = 0

    @staticmethod
    def check_task_quota(task_quota: Optional[Mapping[str, int]], owner: str) -> Optional[Dict[str, int]]:
        """Validate a ``task_quota`` argument; returns a plain dict (or None).

        Raises:
            ValueError: naming the offending entry.
        """
        if task_quota is None:
            return None
        if not isinstance(task_quota, Mapping):
            raise ValueError(f"{owner}: task_quota expected a mapping of task name -> positive integer, found {type(task_quota).__name__}")
        for task, quota in task_quota.items():
            if not isinstance(task, str) or not task:
                raise ValueError(f"{owner}: task_quota expected task names (non-empty strings) as keys, found {task!r}")
            if not _positive_int(quota):
                raise ValueError(f"{owner}: task_quota[{task!r}] expected a positive integer, found {quota!r}")
        return dict(task_quota)

    # ------------------------------------------------------------------ queries
    def __len__(self) -> int:
        return self._size

    def tasks(self) -> List[str]:
        """Tasks with stored samples, in the order they first arrived."""
        return [t for t, s in self._stores.items() if s.size]

    def counts(self) -> Dict[str, int]:
        """Stored samples per task (tasks with none are left out)."""
        return {t: s.size for t, s in self._stores.items() if s.size}

    def class_counts(self, task: str) -> Dict[int, int]:
        """Stored samples per class of ``task``; empty when its targets are not single class indices."""
        store = self._stores.get(task)
        if store is None or not store.size:
            return {}
        labels = self.labels_of(store.targets[: store.size])
        if labels is None:
            return {}
        out: Dict[int, int] = {}
        for label in labels:
            out[label] = out.get(label, 0) + 1
        return dict(sorted(out.items()))

    def store(self, task: str) -> Optional[TaskStore]:
        """``task``'s storage (for policies and plans), or None."""
        return self._stores.get(task)

    def fields(self, task: str) -> List[str]:
        """The fields ``task``'s samples are stored with (``image``, ``target``, then any extras)."""
        store = self._stores.get(task)
        return [] if store is None else list(store.fields)

    def task_fields(self, task: str) -> Dict[str, Tensor]:
        """Views ``{field: (n, ...)}`` of ``task``'s stored samples.

        Raises:
            KeyError: naming the task and the tasks the buffer knows.
        """
        if task not in self._stores:
            raise KeyError(f"ReplayBuffer has no task {task!r}; tasks: {list(self._stores)}")
        return self._stores[task].view()

    def task_data(self, task: str) -> Tuple[Tensor, Tensor]:
        """Views ``(images (n, ...), targets (n, ...))`` of ``task``'s stored samples.

        Raises:
            KeyError: naming the task and the tasks the buffer knows.
        """
        if task not in self._stores:
            raise KeyError(f"ReplayBuffer has no task {task!r}; tasks: {list(self._stores)}")
        store = self._stores[task]
        return store.images[: store.size], store.targets[: store.size]

    def quota_of(self, task: str) -> Optional[int]:
        """``task``'s quota in samples, or None."""
        return None if self.task_quota is None else self.task_quota.get(task)

    def nbytes(self) -> int:
        """Bytes of the stored samples (every field)."""
        return sum(s.size * s.sample_bytes for s in self._stores.values())

    def allocated_bytes(self) -> int:
        """Bytes of the allocated storage (stored samples plus room to grow)."""
        return sum(s.nbytes() for s in self._stores.values())

    @staticmethod
    def labels_of(targets: Tensor) -> Optional[List[int]]:
        """Class index of every sample when targets are single integers (shape ``(n,)`` or ``(n, 1)``), else None."""
        if targets.ndim > 2 or (targets.ndim == 2 and targets.shape[1] != 1) or targets.is_floating_point() or targets.is_complex():
            return None
        return targets.reshape(-1).to("cpu", torch.long).tolist()

    # ------------------------------------------------------------------ insertion
    def add_batch(self, task: str, images: Tensor, targets: Tensor, **extras: Tensor) -> None:
        """Offer every sample of a batch to the storage policy (kept samples are copied to the CPU).

        Args:
            task: the task the samples belong to.
            images: ``(n, ...)`` images.
            targets: ``(n, ...)`` targets.
            **extras: more fields stored with each sample (e.g. ``logits=(n, C)`` for DER++); a task
                keeps the fields it was first offered with.

        Raises:
            ValueError: on tensors of different lengths, or a task whose fields, their shapes or
                dtypes differ from what it stored before (or a sample larger than ``max_mb``).
        """
        batch = {"image": images, "target": targets, **extras}
        self._check_batch(task, batch, "add_batch")
        if len(images) == 0:
            return
        batch = {k: v.detach() for k, v in batch.items()}
        self.observe(task, batch)
        labels = self.labels_of(batch["target"]) if self.policy.uses_labels else None
        self.policy.add_batch(self, task, batch, labels)

    def observe(self, task: str, batch: Mapping[str, Tensor]) -> None:
        """Register ``task``'s fields, their shapes and dtypes, and update the budget (called by :meth:`add_batch`).

        Raises:
            ValueError: if the fields, a shape or a dtype differ from what ``task`` stored before, or
                one sample is larger than ``max_mb``.
        """
        store = self._stores.get(task)
        if store is not None:
            if list(store.fields) != list(batch):
                raise ValueError(
                    f"ReplayBuffer: task {task!r} stores the fields {list(store.fields)}, but new samples come with {list(batch)}; "
                    f"a task's samples must keep one set of fields"
                )
            for what, mine in store.fields.items():
                new = batch[what]
                if tuple(mine.shape[1:]) != tuple(new.shape[1:]) or mine.dtype != new.dtype:
                    raise ValueError(
                        f"ReplayBuffer: task {task!r} stores {what}s of shape {tuple(mine.shape[1:])} and dtype {mine.dtype}, "
                        f"but new {what}s have shape {tuple(new.shape[1:])} and dtype {new.dtype}; a task's samples must keep one shape and dtype"
                    )
        per = sample_bytes(batch)
        capacity = None
        if self.max_mb is not None and per > self.sample_bytes:
            capacity = int(self.max_mb * 2**20 // per)
            if capacity < 1:
                raise ValueError(
                    f"ReplayBuffer: max_mb={self.max_mb} cannot hold one sample of task {task!r} ({per:,} bytes of {' + '.join(batch)}); "
                    f"expected max_mb >= {per / 2**20:.4f}"
                )
        if store is None:
            self._stores[task] = TaskStore.like(batch)
        self.sample_bytes = max(self.sample_bytes, per)
        if capacity is not None and (self.capacity is None or capacity < self.capacity):
            self._set_capacity(capacity)

    def _set_capacity(self, capacity: int) -> None:
        self.capacity = capacity
        if self._size > capacity:
            self.policy.evict_to(self, capacity)
        for task, store in self._stores.items():
            limit = self._row_limit(task)
            if store.rows > limit:
                store.resize(max(store.size, limit))

    def _row_limit(self, task: str) -> int:
        quota = self.quota_of(task)
        capacity = self.capacity or 0
        return capacity if quota is None else min(capacity, quota)

    def plan(self, task: Optional[str], n: int) -> BatchPlan:
        """A fresh :class:`BatchPlan` for ``n`` incoming samples of ``task`` (None: evictions only)."""
        return BatchPlan(self, task, n)

    def commit(self, plan: BatchPlan, batch: Optional[Mapping[str, Tensor]]) -> Dict[str, List[Tuple[int, int]]]:
        """Execute a plan: evict, then write the chosen incoming samples (every field of ``batch``) to their rows.

        Only the chosen rows are copied (to the CPU).

        Returns:
            ``{task: [(from_row, to_row), ...]}``: rows moved to fill eviction holes.
        """
        moves = self.remove(plan.evicted)
        if plan.dest:
            task = plan.task
            store = self._stores[task]
            rows = sorted(plan.dest)
            top = rows[-1] + 1
            if top > self._row_limit(task):
                raise RuntimeError(f"ReplayBuffer: policy {self.policy.name!r} placed task {task!r} beyond its limit of {self._row_limit(task)} rows")
            if top > store.rows:
                store.resize(min(max(top, 2 * store.rows), self._row_limit(task)))
            src = torch.tensor([plan.dest[r] for r in rows], dtype=torch.long)
            dst = torch.tensor(rows, dtype=torch.long)
            store.write(dst, batch, src)
            if top > store.size:
                self._size += top - store.size
                store.size = top
        return moves

    def remove(self, evicted: Mapping[str, Iterable[int]]) -> Dict[str, List[Tuple[int, int]]]:
        """Remove rows of tasks; each task's last rows move into the holes.

        Returns:
            ``{task: [(from_row, to_row), ...]}`` for the moved rows.
        """
        moves: Dict[str, List[Tuple[int, int]]] = {}
        for task, rows in evicted.items():
            rows = set(rows)
            if not rows:
                continue
            store = self._stores[task]
            new = store.size - len(rows)
            holes = sorted(r for r in rows if r < new)
            movers = [r for r in range(new, store.size) if r not in rows]
            if holes:
                store.move(torch.tensor(holes, dtype=torch.long), torch.tensor(movers, dtype=torch.long))
            moves[task] = list(zip(movers, holes))
            self._size -= len(rows)
            store.size = new
            if store.rows > _MIN_ROWS and store.size * 4 <= store.rows:  # amortised O(1) per removed row
                store.resize(max(2 * store.size, _MIN_ROWS))
        return moves

    def set_task_data(self, task: str, images: Tensor, targets: Tensor, **extras: Tensor) -> None:
        """Replace ``task``'s stored samples by ``images``/``targets`` (and ``extras`` fields), copied to the CPU.

        Raises:
            ValueError: on tensors of different lengths, fields, shapes or dtypes that differ from the
                task's, or more samples than the capacity (beside the other tasks') or the task's quota.
        """
        batch = {"image": images, "target": targets, **extras}
        self._check_batch(task, batch, "set_task_data")
        self.observe(task, batch)
        store = self._stores[task]
        n = len(images)
        others = self._size - store.size
        if n + others > (self.capacity or 0):
            raise ValueError(
                f"ReplayBuffer.set_task_data: task {task!r} expected at most {(self.capacity or 0) - others} samples "
                f"(capacity {self.capacity}, other tasks hold {others}), found {n}"
            )
        quota = self.quota_of(task)
        if quota is not None and n > quota:
            raise ValueError(f"ReplayBuffer.set_task_data: task {task!r} expected at most its task_quota of {quota} samples, found {n}")
        self.replace_task_data(task, batch)
        self.policy.on_task_data_set(self, task)

    def replace_task_data(self, task: str, batch: Mapping[str, Tensor]) -> None:
        """Store ``batch`` (every field of ``task``, rows in a policy's order) as ``task``'s samples, without
        checks or policy bookkeeping: for policies that reorder or rebuild a task's rows
        (:meth:`set_task_data` is the checked entry point)."""
        store = self._stores[task]
        self._size += len(batch["image"]) - store.size
        store.fields = {k: batch[k].detach().to("cpu").clone(memory_format=torch.contiguous_format) for k in store.fields}
        store.size = len(batch["image"])

    @staticmethod
    def _check_batch(task: Any, batch: Mapping[str, Any], where: str) -> None:
        if not isinstance(task, str) or not task:
            raise ValueError(f"ReplayBuffer.{where}: task expected a non-empty string, found {task!r}")
        for name, value in batch.items():
            if not isinstance(value, Tensor) or value.ndim < 1:
                plural = {"image": "images", "target": "targets"}.get(name, name)
                raise ValueError(f"ReplayBuffer.{where}: {plural} expected a tensor with a batch dimension, found {getattr(value, 'shape', type(value).__name__)}")
        n = len(batch["image"])
        for name, value in batch.items():
            if name != "image" and len(value) != n:
                plural = {"target": "targets"}.get(name, f"{name!r} values")
                raise ValueError(f"ReplayBuffer.{where}: task {task!r} expected as many {plural} as images, found {len(value)} {plural} for {n} images")

    # ------------------------------------------------------------------ sampling
    def choose(self, m: int, k: int) -> List[int]:
        """``k`` distinct uniform integers of ``[0, m)`` from the buffer's generator (:func:`~framework.replay.sampling.choose`)."""
        return choose(self.generator, m, k)

    def sample(self, n: int, exclude: Sequence[str] = (), balance: str = "uniform", max_tasks: Optional[int] = None) -> Dict[str, Dict[str, Tensor]]:
        """Up to ``n`` distinct stored samples of the tasks not in ``exclude``, every field copied
        (:func:`~framework.replay.sampling.draw` documents the arguments).

        Raises:
            ValueError: on a negative ``n``, an unknown ``balance`` or a ``max_tasks`` below 1.
        """
        return draw(self._stores, self.generator, n, exclude, balance, max_tasks)
