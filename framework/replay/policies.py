"""Storage policies: which offered samples a :class:`~framework.replay.buffer.ReplayBuffer` keeps.

A policy decides, sample by sample but with plain integers only, where each offered sample goes
(a :class:`~framework.replay.buffer.BatchPlan`); the buffer then copies the kept samples in one
vectorised step per task.  Every policy works for every task kind: targets that are single
integers (class indices) form one group per class, any other target (masks, ``(time, event)``
pairs, multilabel vectors, float scalars) one group per task.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor

from framework.core.registry import POLICIES

if TYPE_CHECKING:  # pragma: no cover
    from framework.replay.buffer import ReplayBuffer

__all__ = ["StoragePolicy", "ReservoirPolicy", "ClassBalancedPolicy", "POLICIES", "Group", "Encoder", "register_policy"]

#: a storage group: ``(task, class index)``, or ``(task, None)`` for targets that are not class indices
Group = Tuple[str, Optional[int]]
#: ``encode(task) -> (images, targets, features)``: a task's training samples (or a seeded subset of them)
#: with their L2-normalised backbone features, computed on request (the replay strategy provides it)
Encoder = Callable[[str], Tuple[Tensor, Tensor, Tensor]]


class StoragePolicy(ABC):
    """Decides which offered samples a buffer keeps and which stored samples they replace.

    A user's policy subclasses this and registers with ``@POLICIES.register("name")``
    (:data:`~framework.core.registry.POLICIES`); ``Replay(policy="name")`` then uses it.  It plans
    each offered batch on ``buffer.plan(task, n)`` (append, place, evict; draws from
    ``plan.rand``) and executes the plan with ``buffer.commit(plan, batch)`` (docs/extending.md).

    Attributes:
        name: the policy's registry name (stored in checkpoints; set by the registration).
        uses_labels: whether :meth:`add_batch` needs the class labels of the batch.
    """

    name: str = ""
    uses_labels: bool = False

    @abstractmethod
    def add_batch(self, buffer: "ReplayBuffer", task: str, batch: Mapping[str, Tensor], labels: Optional[List[int]]) -> None:
        """Offer a batch of ``task``: ``batch`` holds ``image``, ``target`` and any extra stored field, ``(n, ...)``
        each; ``labels``: class indices when :attr:`uses_labels` and the targets are classes."""

    @abstractmethod
    def evict_to(self, buffer: "ReplayBuffer", capacity: int) -> None:
        """Evict until the buffer holds at most ``capacity`` samples (its capacity shrank)."""

    def on_task_data_set(self, buffer: "ReplayBuffer", task: str) -> None:
        """``task``'s contents were replaced by :meth:`ReplayBuffer.set_task_data`."""

    def after_experience(self, buffer: "ReplayBuffer", tasks: List[str], encode: Encoder) -> None:
        """An experience training ``tasks`` ended; ``encode(task)`` gives its samples with their features
        (computed only if called).  Nothing by default; herding selects its exemplars here."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any], buffer: "ReplayBuffer") -> None:
        """Restore from :meth:`state_dict`, after ``buffer``'s contents were restored."""


def register_policy(name: str):
    """Class decorator: register a :class:`StoragePolicy` under ``name`` (sets ``cls.name``, stored in checkpoints).

    Raises:
        ValueError: if the class is not a StoragePolicy or the name is taken by another class.
    """
    return POLICIES.subclass_decorator(name, StoragePolicy, "register_policy")


def _locate(buffer: "ReplayBuffer", indices: Sequence[int]) -> Dict[str, List[int]]:
    """Global indices over the buffer's samples (tasks in order) -> ``{task: rows}``."""
    counts = list(buffer.counts().items())
    out: Dict[str, List[int]] = {}
    for index in sorted(indices):
        for task, n in counts:
            if index < n:
                out.setdefault(task, []).append(index)
                break
            index -= n
    return out


@register_policy("reservoir")
class ReservoirPolicy(StoragePolicy):
    """Reservoir sampling (Vitter's algorithm R) over the whole stream.

    The ``s``-th offered sample is kept with probability ``capacity / s`` and replaces a uniformly
    random stored sample, so every sample seen so far is in the buffer with the same probability
    and tasks are represented in proportion to their stream sizes.  The slot table of algorithm R
    is not needed: a random slot of a full buffer is a random stored sample, which is drawn from
    the per-task counts (samples kept earlier in the same batch included).

    With a ``task_quota``, a task at its quota keeps its ``s_t``-th sample with probability
    ``quota / s_t`` in place of a random sample of its own (reservoir within the task).
    """

    def __init__(self) -> None:
        self.seen = 0
        self.task_seen: Dict[str, int] = {}

    def add_batch(self, buffer: "ReplayBuffer", task: str, batch: Mapping[str, Tensor], labels: Optional[List[int]]) -> None:
        n = len(batch["image"])
        plan = buffer.plan(task, n)
        capacity, quota = buffer.capacity, buffer.quota_of(task)
        seen_task = self.task_seen.get(task, 0)
        for i in range(n):
            self.seen += 1
            seen_task += 1
            if quota is not None and plan.members >= quota:
                j = plan.rand.below(seen_task)
                if j < plan.members:
                    plan.place(i, j)
                continue
            if plan.total < capacity:
                plan.append(i)
                continue
            j = plan.rand.below(self.seen)  # slot j of a full buffer: kept when j < capacity
            if j >= capacity:
                continue
            if j < plan.members:  # the slot holds one of this task's samples
                plan.place(i, j)
            else:
                plan.evict(*plan.random_other())
                plan.append(i)
        self.task_seen[task] = seen_task
        buffer.commit(plan, batch)

    def evict_to(self, buffer: "ReplayBuffer", capacity: int) -> None:
        excess = len(buffer) - capacity
        if excess > 0:
            buffer.remove(_locate(buffer, buffer.choose(len(buffer), excess)))

    def state_dict(self) -> Dict[str, Any]:
        return {"seen": self.seen, "task_seen": dict(self.task_seen)}

    def load_state_dict(self, state: Mapping[str, Any], buffer: "ReplayBuffer") -> None:
        self.seen = int(state.get("seen", 0))
        self.task_seen = {str(t): int(n) for t, n in dict(state.get("task_seen", {})).items()}


@register_policy("class_balanced")
class ClassBalancedPolicy(StoragePolicy):
    """Equal share of the capacity for every ``(task, class)`` group seen so far.

    While the buffer has room every sample is kept.  A sample whose group holds fewer than its
    share (``capacity // groups``) replaces a random sample of the currently largest group (of
    its own task, when the task is at its ``task_quota``); a group at its share keeps samples by
    reservoir sampling within the group.  Targets that are not single class indices form one
    group per task.  An index group -> rows makes each decision O(groups), not O(capacity).
    """

    uses_labels = True

    def __init__(self) -> None:
        self.seen: Dict[Group, int] = {}
        self.members: Dict[Group, List[int]] = {}
        self._group: Dict[str, List[Optional[Group]]] = {}  # task -> row -> group
        self._pos: Dict[str, List[int]] = {}  # task -> row -> position in members[group]

    # ------------------------------------------------------------------ index
    def _add(self, group: Group, row: int) -> None:
        task = group[0]
        groups, pos = self._group.setdefault(task, []), self._pos.setdefault(task, [])
        own = self.members.setdefault(group, [])
        if row == len(groups):
            groups.append(group)
            pos.append(len(own))
        else:
            groups[row], pos[row] = group, len(own)
        own.append(row)

    def _drop(self, task: str, row: int) -> None:
        groups, pos = self._group[task], self._pos[task]
        own, p = self.members[groups[row]], pos[row]
        last = own.pop()
        if last != row:
            own[p] = last
            pos[last] = p
        groups[row] = None

    def _apply_moves(self, buffer: "ReplayBuffer", moves: Mapping[str, List[Tuple[int, int]]]) -> None:
        for task, pairs in moves.items():
            groups, pos = self._group[task], self._pos[task]
            for src, dst in pairs:
                group = groups[src]
                groups[dst], pos[dst] = group, pos[src]
                self.members[group][pos[src]] = dst
            size = buffer.counts().get(task, 0)
            del groups[size:], pos[size:]

    def _evict_largest(self, plan: Any, pool: Sequence[Group]) -> Optional[Tuple[str, int]]:
        """Drop a random member of the largest group of ``pool``; returns its ``(task, row)``."""
        largest = max(pool, key=lambda g: len(self.members[g]), default=None)
        if largest is None or not self.members[largest]:
            return None
        own = self.members[largest]
        row = own[plan.rand.below(len(own))]
        self._drop(largest[0], row)
        return largest[0], row

    # ------------------------------------------------------------------ policy
    def add_batch(self, buffer: "ReplayBuffer", task: str, batch: Mapping[str, Tensor], labels: Optional[List[int]]) -> None:
        n = len(batch["image"])
        plan = buffer.plan(task, n)
        capacity, quota = buffer.capacity, buffer.quota_of(task)
        for i in range(n):
            group = (task, None if labels is None else labels[i])
            self.seen[group] = self.seen.get(group, 0) + 1
            own = self.members.setdefault(group, [])
            share = max(1, capacity // len(self.seen))
            at_quota = quota is not None and plan.members >= quota
            if not at_quota and plan.total < capacity:
                self._add(group, plan.append(i))
                continue
            if len(own) < share:
                pool = [g for g in self.members if g[0] == task] if at_quota else list(self.members)
                pool = [g for g in pool if g != group and len(self.members[g]) > len(own)]
                victim = self._evict_largest(plan, pool)
                if victim is not None:
                    if victim[0] == task:
                        plan.place(i, victim[1])
                        self._add(group, victim[1])
                    else:
                        plan.evict(*victim)
                        self._add(group, plan.append(i))
                    continue
            j = plan.rand.below(self.seen[group])  # reservoir sampling within the group
            if j < len(own):
                plan.place(i, own[j])
        self._apply_moves(buffer, buffer.commit(plan, batch))

    def evict_to(self, buffer: "ReplayBuffer", capacity: int) -> None:
        plan = buffer.plan(None, 0)
        for _ in range(len(buffer) - capacity):
            task, row = self._evict_largest(plan, list(self.members))
            plan.evict(task, row)
        self._apply_moves(buffer, buffer.commit(plan, None))

    def on_task_data_set(self, buffer: "ReplayBuffer", task: str) -> None:
        for group in self.members:
            if group[0] == task:
                self.members[group] = []
        self._group[task], self._pos[task] = [], []
        _, targets = buffer.task_data(task)
        labels = buffer.labels_of(targets) or [None] * len(targets)
        for row, label in enumerate(labels):
            self._add((task, label), row)
        for group, rows in self.members.items():
            if group[0] == task:
                self.seen[group] = max(self.seen.get(group, 0), len(rows))

    def state_dict(self) -> Dict[str, Any]:
        return {
            "seen": [[t, c, n] for (t, c), n in self.seen.items()],
            "members": [[t, c, torch.tensor(rows, dtype=torch.long)] for (t, c), rows in self.members.items()],
        }

    def load_state_dict(self, state: Mapping[str, Any], buffer: "ReplayBuffer") -> None:
        seen = {(str(t), None if c is None else int(c)): int(n) for t, c, n in state.get("seen", [])}
        members = {(str(t), None if c is None else int(c)): [int(r) for r in rows] for t, c, rows in state.get("members", [])}
        groups: Dict[str, List[Optional[Group]]] = {t: [None] * n for t, n in buffer.counts().items()}
        pos: Dict[str, List[int]] = {t: [0] * n for t, n in buffer.counts().items()}
        for group, rows in members.items():
            for p, row in enumerate(rows):
                task_rows = groups.get(group[0])
                if task_rows is None or not 0 <= row < len(task_rows) or task_rows[row] is not None:
                    raise ValueError(
                        f"ClassBalancedPolicy: checkpoint field 'policy_state.members' lists row {row} of task {group[0]!r}, "
                        f"which the buffer does not hold once (it holds {buffer.counts().get(group[0], 0)} samples)"
                    )
                task_rows[row], pos[group[0]][row] = group, p
        missing = [t for t, rows in groups.items() if any(g is None for g in rows)]
        if missing:
            raise ValueError(f"ClassBalancedPolicy: checkpoint field 'policy_state.members' misses stored rows of task(s) {missing}")
        self.seen, self.members, self._group, self._pos = seen, members, groups, pos
