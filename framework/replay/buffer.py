"""Tensor-backed rehearsal storage: a budget of ``(task, image, target)`` exemplars on the CPU.

Every task has its own preallocated ``images (rows, *shape)`` and ``targets (rows, *tshape)``
tensors, in the dtype the data provided (uint8 images stay uint8).  Rows ``0 .. size-1`` hold
the task's samples; an evicted row is filled by moving the task's last row into the hole, so
insertion, eviction and sampling touch only the rows they read or write: the work of one
training step (offer a batch, draw a replay batch) does not grow with the buffer's capacity.

*Which* samples are kept is decided by a storage policy (:mod:`framework.replay.policies`); the
buffer executes its decisions with vectorised ``index_copy_`` / ``index_select`` per task.
"""
from __future__ import annotations

import bisect
import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Set, Tuple, Union

import torch
from torch import Tensor

from framework.replay.policies import POLICIES, StoragePolicy

__all__ = ["ReplayBuffer", "BatchPlan", "STATE_FORMAT", "BALANCE_MODES"]

#: version of :meth:`ReplayBuffer.state_dict`'s layout
STATE_FORMAT = 2
#: ``balance`` values accepted by :meth:`ReplayBuffer.sample`
BALANCE_MODES = ("uniform", "task")
_MIN_ROWS = 64  # allocations are not shrunk below this many rows


def _positive_int(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= 1


class _Uniforms:
    """Uniform draws from a generator, fetched in chunks (one tensor call per chunk)."""

    def __init__(self, generator: torch.Generator, chunk: int) -> None:
        self.generator = generator
        self.chunk = max(int(chunk), 16)
        self.values: List[float] = []
        self.next = 0

    def below(self, m: int) -> int:
        """A uniform integer in ``[0, m)``."""
        if self.next == len(self.values):
            self.values = torch.rand(self.chunk, dtype=torch.float64, generator=self.generator).tolist()
            self.next = 0
        u = self.values[self.next]
        self.next += 1
        return min(int(u * m), m - 1)


class _Store:
    """One task's preallocated storage; rows ``0 .. size-1`` are valid."""

    __slots__ = ("images", "targets", "size")

    def __init__(self, images: Tensor, targets: Tensor, size: int) -> None:
        self.images, self.targets, self.size = images, targets, size

    @classmethod
    def like(cls, images: Tensor, targets: Tensor) -> "_Store":
        return cls(images.new_empty((0, *images.shape[1:]), device="cpu"), targets.new_empty((0, *targets.shape[1:]), device="cpu"), 0)

    @property
    def rows(self) -> int:
        return self.images.shape[0]

    @property
    def sample_bytes(self) -> int:
        return _sample_bytes(self.images, self.targets)

    def resize(self, rows: int) -> None:
        """Reallocate to ``rows`` rows (>= size), keeping the stored samples."""
        images = self.images.new_empty((rows, *self.images.shape[1:]))
        targets = self.targets.new_empty((rows, *self.targets.shape[1:]))
        images[: self.size] = self.images[: self.size]
        targets[: self.size] = self.targets[: self.size]
        self.images, self.targets = images, targets


def _sample_bytes(images: Tensor, targets: Tensor) -> int:
    return math.prod(images.shape[1:]) * images.element_size() + math.prod(targets.shape[1:]) * targets.element_size()


class BatchPlan:
    """A policy's decisions for one offered batch of ``task``, executed by :meth:`ReplayBuffer.commit`.

    Destinations are rows of ``task``: rows below :attr:`base` overwrite stored samples, rows from
    :attr:`base` on are appended (contiguously).  A later incoming sample may take an earlier
    one's destination (it then replaces that sample, as in the sequential algorithm).  Samples of
    other tasks are evicted with :meth:`evict`; ``task``'s own samples are overwritten, never
    evicted, so the destinations stay valid.

    Attributes:
        rand: uniform draws from the buffer's generator (``rand.below(m)``).
    """

    def __init__(self, buffer: "ReplayBuffer", task: Optional[str], n: int) -> None:
        store = buffer._stores.get(task) if task is not None else None
        self.task = task
        self.base = store.size if store is not None else 0
        self.appended = 0
        self.dest: Dict[int, int] = {}
        self.evicted: Dict[str, Set[int]] = {}
        self.n_evicted = 0
        self.rand = _Uniforms(buffer.generator, n)
        self._others = [(t, s.size) for t, s in buffer._stores.items() if t != task and s.size]
        self._starts: List[int] = []
        total = 0
        for _, size in self._others:
            self._starts.append(total)
            total += size
        self.n_other = total

    @property
    def members(self) -> int:
        """Samples ``task`` holds now, this batch's placements included."""
        return self.base + self.appended

    @property
    def total(self) -> int:
        """Samples the buffer holds now, this batch's decisions included."""
        return self.n_other - self.n_evicted + self.members

    def place(self, i: int, row: int) -> None:
        """Incoming sample ``i`` replaces whatever holds ``row`` of ``task`` (a stored row or an appended one)."""
        self.dest[row] = i

    def append(self, i: int) -> int:
        """Incoming sample ``i`` takes a new row of ``task``; returns that row."""
        row = self.base + self.appended
        self.appended += 1
        self.dest[row] = i
        return row

    def evict(self, task: str, row: int) -> None:
        """Remove the stored ``row`` of another task."""
        rows = self.evicted.setdefault(task, set())
        if row not in rows:
            rows.add(row)
            self.n_evicted += 1

    def random_other(self) -> Tuple[str, int]:
        """A uniformly random stored sample of the other tasks that is not evicted yet.

        Rejection sampling over the other tasks' samples (expected draws <= 2), or, when more than
        half of them are evicted, a draw among the O(batch) survivors.
        """
        alive = self.n_other - self.n_evicted
        if alive <= 0:
            raise RuntimeError("BatchPlan.random_other: no sample of another task is left")
        if self.n_evicted * 2 <= self.n_other:
            while True:
                task, row = self._locate(self.rand.below(self.n_other))
                if row not in self.evicted.get(task, ()):
                    return task, row
        survivors = [(t, r) for t, size in self._others for r in range(size) if r not in self.evicted.get(t, ())]
        return survivors[self.rand.below(len(survivors))]

    def _locate(self, index: int) -> Tuple[str, int]:
        k = bisect.bisect_right(self._starts, index) - 1
        return self._others[k][0], index - self._starts[k]


class ReplayBuffer:
    """A budget of stored ``(task, image, target)`` exemplars on the CPU.

    Args:
        capacity: budget in samples, all tasks together; or
        max_mb: budget in megabytes (2**20 bytes) of image + target data: the capacity in samples is
            ``floor(max_mb * 2**20 / b)``, ``b`` the largest per-sample size seen so far, so it
            shrinks (and the policy evicts) when a larger kind of sample arrives.  Exactly one of
            ``capacity`` and ``max_mb`` is given.
        policy: a :class:`~framework.replay.policies.StoragePolicy` instance or a name of
            :data:`~framework.replay.policies.POLICIES` (default ``"reservoir"``).
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
            if policy not in POLICIES:
                raise ValueError(f"ReplayBuffer: policy expected one of {sorted(POLICIES)} or a StoragePolicy, found {policy!r}")
            policy = POLICIES[policy]()
        if not isinstance(policy, StoragePolicy):
            raise ValueError(f"ReplayBuffer: policy expected one of {sorted(POLICIES)} or a StoragePolicy, found {type(policy).__name__}")
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
        self._stores: Dict[str, _Store] = {}
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
        """Bytes of the stored samples (images and targets)."""
        return sum(s.size * s.sample_bytes for s in self._stores.values())

    def allocated_bytes(self) -> int:
        """Bytes of the allocated storage (stored samples plus room to grow)."""
        return sum(s.images.nbytes + s.targets.nbytes for s in self._stores.values())

    @staticmethod
    def labels_of(targets: Tensor) -> Optional[List[int]]:
        """Class index of every sample when targets are single integers (shape ``(n,)`` or ``(n, 1)``), else None."""
        if targets.ndim > 2 or (targets.ndim == 2 and targets.shape[1] != 1) or targets.is_floating_point() or targets.is_complex():
            return None
        return targets.reshape(-1).to("cpu", torch.long).tolist()

    # ------------------------------------------------------------------ insertion
    def add_batch(self, task: str, images: Tensor, targets: Tensor) -> None:
        """Offer every sample of a batch to the storage policy (kept samples are copied to the CPU).

        Raises:
            ValueError: on tensors of different lengths, or a task whose image or target shape or
                dtype differs from what it stored before (or a sample larger than ``max_mb``).
        """
        self._check_batch(task, images, targets, "add_batch")
        if len(images) == 0:
            return
        images, targets = images.detach(), targets.detach()
        self.observe(task, images, targets)
        labels = self.labels_of(targets) if self.policy.uses_labels else None
        self.policy.add_batch(self, task, images, targets, labels)

    def observe(self, task: str, images: Tensor, targets: Tensor) -> None:
        """Register ``task``'s sample shape and dtype and update the budget (called by :meth:`add_batch`).

        Raises:
            ValueError: if the shape or dtype differs from what ``task`` stored before, or one
                sample is larger than ``max_mb``.
        """
        store = self._stores.get(task)
        if store is not None:
            for what, mine, new in (("image", store.images, images), ("target", store.targets, targets)):
                if tuple(mine.shape[1:]) != tuple(new.shape[1:]) or mine.dtype != new.dtype:
                    raise ValueError(
                        f"ReplayBuffer: task {task!r} stores {what}s of shape {tuple(mine.shape[1:])} and dtype {mine.dtype}, "
                        f"but new {what}s have shape {tuple(new.shape[1:])} and dtype {new.dtype}; a task's samples must keep one shape and dtype"
                    )
        per = _sample_bytes(images, targets)
        capacity = None
        if self.max_mb is not None and per > self.sample_bytes:
            capacity = int(self.max_mb * 2**20 // per)
            if capacity < 1:
                raise ValueError(
                    f"ReplayBuffer: max_mb={self.max_mb} cannot hold one sample of task {task!r} ({per:,} bytes of image + target); "
                    f"expected max_mb >= {per / 2**20:.4f}"
                )
        if store is None:
            self._stores[task] = _Store.like(images, targets)
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

    def commit(self, plan: BatchPlan, images: Optional[Tensor], targets: Optional[Tensor]) -> Dict[str, List[Tuple[int, int]]]:
        """Execute a plan: evict, then write the chosen incoming samples to their rows.

        Only the chosen rows of ``images``/``targets`` are copied (to the CPU).

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
            store.images.index_copy_(0, dst, images.index_select(0, src.to(images.device)).to("cpu"))
            store.targets.index_copy_(0, dst, targets.index_select(0, src.to(targets.device)).to("cpu"))
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
                h, m = torch.tensor(holes, dtype=torch.long), torch.tensor(movers, dtype=torch.long)
                store.images.index_copy_(0, h, store.images.index_select(0, m))
                store.targets.index_copy_(0, h, store.targets.index_select(0, m))
            moves[task] = list(zip(movers, holes))
            self._size -= len(rows)
            store.size = new
            if store.rows > _MIN_ROWS and store.size * 4 <= store.rows:  # amortised O(1) per removed row
                store.resize(max(2 * store.size, _MIN_ROWS))
        return moves

    def set_task_data(self, task: str, images: Tensor, targets: Tensor) -> None:
        """Replace ``task``'s stored samples by ``images``/``targets`` (copied to the CPU).

        Raises:
            ValueError: on tensors of different lengths, a shape or dtype that differs from the
                task's, or more samples than the capacity (beside the other tasks') or the task's quota.
        """
        self._check_batch(task, images, targets, "set_task_data")
        self.observe(task, images, targets)
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
        self._replace(task, images, targets)
        self.policy.on_task_data_set(self, task)

    def _replace(self, task: str, images: Tensor, targets: Tensor) -> None:
        store = self._stores[task]
        self._size += len(images) - store.size
        store.images = images.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        store.targets = targets.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        store.size = len(images)

    @staticmethod
    def _check_batch(task: Any, images: Any, targets: Any, where: str) -> None:
        if not isinstance(task, str) or not task:
            raise ValueError(f"ReplayBuffer.{where}: task expected a non-empty string, found {task!r}")
        for name, value in (("images", images), ("targets", targets)):
            if not isinstance(value, Tensor) or value.ndim < 1:
                raise ValueError(f"ReplayBuffer.{where}: {name} expected a tensor with a batch dimension, found {getattr(value, 'shape', type(value).__name__)}")
        if len(images) != len(targets):
            raise ValueError(f"ReplayBuffer.{where}: task {task!r} expected as many targets as images, found {len(targets)} targets for {len(images)} images")

    # ------------------------------------------------------------------ sampling
    def choose(self, m: int, k: int) -> List[int]:
        """``k`` distinct uniform integers of ``[0, m)`` (Floyd's algorithm: O(k), not O(m))."""
        if k >= m:
            return list(range(m))
        if k <= 0:
            return []
        u = torch.rand(k, dtype=torch.float64, generator=self.generator).tolist()
        chosen: Set[int] = set()
        out = []
        for step, j in enumerate(range(m - k, m)):
            t = min(int(u[step] * (j + 1)), j)
            if t in chosen:
                t = j
            chosen.add(t)
            out.append(t)
        return out

    def sample(self, n: int, exclude: Sequence[str] = (), balance: str = "uniform", max_tasks: Optional[int] = None) -> Dict[str, Dict[str, Tensor]]:
        """Draw up to ``n`` distinct stored samples of the tasks not in ``exclude``.

        Args:
            n: how many to draw.
            exclude: tasks to skip (those of the current batch).
            balance: ``"uniform"``: every eligible stored sample is equally likely; ``"task"``: each
                eligible task gets an equal share of the ``n`` draws (the remainder goes to random
                tasks), drawn uniformly from its samples and capped by what it holds.
            max_tasks: draw from at most this many eligible tasks, chosen uniformly at random
                (``balance`` then applies among them); ``None``: every eligible task.  Each task in a
                batch costs the model one forward/backward pass, so this keeps a step's cost flat
                as tasks accumulate.  The draw is still capped by what the chosen tasks hold.

        Returns:
            ``{task: {"image": (k, ...), "target": (k, ...)}}`` (copies, in the stored dtype) for
            the tasks drawn, in the buffer's task order.

        Raises:
            ValueError: on a negative ``n``, an unknown ``balance`` or a ``max_tasks`` below 1.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"ReplayBuffer.sample: n expected an integer >= 0, found {n!r}")
        if max_tasks is not None and (isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 1):
            raise ValueError(f"ReplayBuffer.sample: max_tasks expected an integer >= 1 or None, found {max_tasks!r}")
        if balance not in BALANCE_MODES:
            raise ValueError(f"ReplayBuffer.sample: balance expected one of {list(BALANCE_MODES)}, found {balance!r}")
        excluded = set(exclude)
        eligible = [(t, s) for t, s in self._stores.items() if s.size and t not in excluded]
        if not eligible or n == 0:
            return {}
        if max_tasks is not None and len(eligible) > max_tasks:  # (choose() draws nothing when the cap does not bind)
            eligible = [eligible[k] for k in sorted(self.choose(len(eligible), max_tasks))]
        rows: Dict[str, List[int]] = {}
        if balance == "uniform":
            starts, total = [], 0
            for _, store in eligible:
                starts.append(total)
                total += store.size
            for index in self.choose(total, min(n, total)):
                k = bisect.bisect_right(starts, index) - 1
                rows.setdefault(eligible[k][0], []).append(index - starts[k])
        else:
            share, extra = divmod(n, len(eligible))
            lucky = set(self.choose(len(eligible), extra))
            for k, (task, store) in enumerate(eligible):
                picks = self.choose(store.size, min(share + (k in lucky), store.size))
                if picks:
                    rows[task] = picks
        out = {}
        for task, store in eligible:
            if task in rows:
                index = torch.tensor(sorted(rows[task]), dtype=torch.long)
                out[task] = {"image": store.images.index_select(0, index), "target": store.targets.index_select(0, index)}
        return out

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """Compact per-task tensors (trimmed to size, copied) and the policy's and generator's
        state; loadable with ``torch.load(weights_only=True)``."""
        return {
            "format": STATE_FORMAT,
            "policy": self.policy.name,
            "capacity": self.budget_capacity,
            "max_mb": self.max_mb,
            "task_quota": None if self.task_quota is None else dict(self.task_quota),
            "effective_capacity": self.capacity,
            "sample_bytes": self.sample_bytes,
            "generator": self.generator.get_state(),
            "tasks": {t: {"image": s.images[: s.size].clone(), "target": s.targets[: s.size].clone()} for t, s in self._stores.items()},
            "policy_state": self.policy.state_dict(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`.

        Raises:
            ValueError: naming the field, the checkpoint's value and this buffer's, if the policy or
                budget (``capacity``, ``max_mb``, ``task_quota``) differs, or if the state is not in
                this version's format.
        """
        if not isinstance(state, Mapping):
            raise ValueError(f"ReplayBuffer.load_state_dict: expected a mapping from ReplayBuffer.state_dict, found {type(state).__name__}")
        if state.get("format") != STATE_FORMAT:
            raise ValueError(
                f"ReplayBuffer: the checkpoint's replay buffer format is from an older MedCL (field 'format' is {state.get('format')!r}, "
                f"this version reads {STATE_FORMAT}); it cannot be loaded, retrain or start from the model weights with init_from"
            )
        mine = {"policy": self.policy.name, "capacity": self.budget_capacity, "max_mb": self.max_mb, "task_quota": self.task_quota}
        for field, value in mine.items():
            if state.get(field) != value:
                verb = "uses" if field == "policy" else "has"
                raise ValueError(f"ReplayBuffer: checkpoint field '{field}' is {state.get(field)!r}, this buffer {verb} {value!r}")
        stores: Dict[str, _Store] = {}
        for task, data in dict(state.get("tasks", {})).items():
            images, targets = data.get("image"), data.get("target")
            if not isinstance(images, Tensor) or not isinstance(targets, Tensor) or len(images) != len(targets):
                raise ValueError(f"ReplayBuffer: checkpoint field 'tasks.{task}' expected 'image' and 'target' tensors of one length")
            stores[task] = _Store(images.to("cpu").contiguous(), targets.to("cpu").contiguous(), len(images))
        size = sum(s.size for s in stores.values())
        capacity = state.get("effective_capacity")
        if size > (capacity or 0):
            raise ValueError(f"ReplayBuffer: checkpoint holds {size} samples, more than its field 'effective_capacity' ({capacity})")
        previous = (self._stores, self._size, self.capacity, self.sample_bytes, self.generator.get_state())
        self._stores, self._size = stores, size
        self.capacity = capacity
        self.sample_bytes = int(state.get("sample_bytes", 0))
        try:
            self.generator.set_state(state["generator"])
            self.policy.load_state_dict(state.get("policy_state", {}), self)
        except Exception:
            self._stores, self._size, self.capacity, self.sample_bytes = previous[:4]
            self.generator.set_state(previous[4])
            raise
