"""Herding selection of exemplars (Welling 2009; iCaRL, Rebuffi et al. 2017)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Tuple

import torch
from torch import Tensor

from framework.replay.policies import Encoder, Group, StoragePolicy, register_policy

if TYPE_CHECKING:  # pragma: no cover
    from framework.replay.buffer import ReplayBuffer

__all__ = ["herding_order", "HerdingPolicy"]


def herding_order(features: Tensor, k: int) -> Tensor:
    """Indices of ``k`` samples in herding order.

    Features are L2-normalised; the ``t``-th pick is the sample (not yet picked) whose addition
    brings the mean of the picks closest to the mean of all normalised features, so the first pick
    is the sample nearest that mean and every prefix of the order is a good small exemplar set.
    Ties go to the lower index.

    Args:
        features: ``(n, d)`` features of the ``n`` candidates.
        k: how many to pick; at most ``n``.

    Returns:
        ``(k,)`` LongTensor of distinct row indices of ``features``.

    Raises:
        ValueError: if ``features`` is not 2-D, holds non-finite values, or ``k`` is not an integer in ``[0, n]``.
    """
    if not isinstance(features, Tensor) or features.ndim != 2:
        raise ValueError(f"herding_order: features expected a 2-D tensor (n, d), found {getattr(features, 'shape', type(features).__name__)}")
    n = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"herding_order: k expected an integer in [0, {n}] (the number of candidates), found {k!r}")
    if k == 0:
        return torch.empty(0, dtype=torch.long)
    feats = torch.nn.functional.normalize(features.detach().to(torch.float64), dim=1)
    if not torch.isfinite(feats).all():
        raise ValueError("herding_order: features expected finite values, found NaN or inf")
    mean = feats.mean(dim=0)
    running = torch.zeros_like(mean)
    taken = torch.zeros(n, dtype=torch.bool)
    order = []
    for t in range(1, k + 1):
        # distance between the target mean and the mean of the picks if sample i were added
        dist = ((mean - (running + feats) / t) ** 2).sum(dim=1)
        dist[taken] = float("inf")
        i = int(torch.argmin(dist))
        order.append(i)
        taken[i] = True
        running += feats[i]
    return torch.tensor(order, dtype=torch.long)


@register_policy("herding")
class HerdingPolicy(StoragePolicy):
    """iCaRL's exemplar selection by herding (Rebuffi et al., 2017).

    Stores nothing while an experience trains.  At its end, :meth:`select` receives backbone
    features of the experience's training samples (the :class:`~framework.strategies.Replay`
    strategy computes them when :meth:`after_experience` asks) and keeps, for every group (class, or task for non-class targets), the first
    ``quota`` samples of the group in herding order (:func:`~framework.replay.herding.herding_order`):
    those whose running mean best approximates the group's mean L2-normalised feature.  Every group
    seen so far gets the same quota, ``capacity // groups`` (capped by ``task_quota // the task's
    groups``); when new groups shrink it, older groups keep their first-ranked exemplars.  A
    task's exemplars are stored group by group, each in herding order.
    """

    def __init__(self) -> None:
        self.groups: List[Group] = []
        self.segments: Dict[str, List[List[Any]]] = {}  # task -> [[label, count], ...] in storage order

    def add_batch(self, buffer: "ReplayBuffer", task: str, batch: Mapping[str, Tensor], labels: Optional[List[int]]) -> None:
        """Nothing is stored during an experience (see :meth:`select`)."""

    def after_experience(self, buffer: "ReplayBuffer", tasks: List[str], encode: Encoder) -> None:
        """Encode the experience's tasks and :meth:`select` their exemplars."""
        self.select(buffer, {task: encode(task) for task in tasks})

    def quota(self, buffer: "ReplayBuffer", task: str) -> int:
        """Exemplars per group of ``task`` under the current capacity and groups."""
        if not self.groups:
            return 0
        share = (buffer.capacity or 0) // len(self.groups)
        limit = buffer.quota_of(task)
        if limit is not None:
            share = min(share, limit // max(1, sum(1 for g in self.groups if g[0] == task)))
        return share

    def select(self, buffer: "ReplayBuffer", candidates: Mapping[str, Tuple[Tensor, Tensor, Tensor]]) -> None:
        """Choose the exemplars of the tasks in ``candidates`` and shrink older tasks' to the new quota.

        Args:
            buffer: the buffer to fill.
            candidates: ``{task: (images (n, ...), targets (n, ...), features (n, d))}``; a task's
                previous exemplars are replaced.

        Raises:
            ValueError: if a task's three tensors differ in length or ``features`` is not 2-D.
        """
        labels: Dict[str, List[Optional[int]]] = {}
        for task, (images, targets, features) in candidates.items():
            if not isinstance(features, Tensor) or features.ndim != 2 or not len(images) == len(targets) == len(features):
                raise ValueError(
                    f"HerdingPolicy.select: task {task!r} expected images, targets and 2-D features of one length, "
                    f"found {len(images)}, {len(targets)} and {tuple(getattr(features, 'shape', ()))}"
                )
            if len(images):
                buffer.observe(task, {"image": images, "target": targets})
            found = buffer.labels_of(targets)
            labels[task] = [None] * len(images) if found is None else found
            for label in sorted(set(labels[task]), key=lambda c: -1 if c is None else c):
                if (task, label) not in self.groups:
                    self.groups.append((task, label))
        for task in list(self.segments):
            if task not in candidates:
                self._truncate(buffer, task)
        for task, (images, targets, _) in candidates.items():
            if task in self.segments:  # a task trained again: its old exemplars make room first
                self._store(buffer, task, images[:0], targets[:0], [])
        for task, (images, targets, features) in candidates.items():
            quota = self.quota(buffer, task)
            chosen: List[Tensor] = []
            segments: List[List[Any]] = []
            for label in [g[1] for g in self.groups if g[0] == task]:
                rows = torch.tensor([r for r, c in enumerate(labels[task]) if c == label], dtype=torch.long)
                k = min(quota, len(rows))
                if k:
                    chosen.append(rows[herding_order(features.index_select(0, rows.to(features.device)).cpu(), k)])
                    segments.append([label, k])
            index = torch.cat(chosen) if chosen else torch.empty(0, dtype=torch.long)
            self._store(buffer, task, images.index_select(0, index.to(images.device)), targets.index_select(0, index.to(targets.device)), segments)

    def _store(self, buffer: "ReplayBuffer", task: str, images: Tensor, targets: Tensor, segments: List[List[Any]]) -> None:
        buffer.set_task_data(task, images, targets)
        self.segments[task] = segments

    def _truncate(self, buffer: "ReplayBuffer", task: str) -> None:
        quota = self.quota(buffer, task)
        segments = self.segments[task]
        if all(count <= quota for _, count in segments):
            return
        keep, start, kept = [], 0, []
        for label, count in segments:
            k = min(count, quota)
            keep.append(torch.arange(start, start + k))
            start += count
            if k:
                kept.append([label, k])
        images, targets = buffer.task_data(task)
        index = torch.cat(keep) if keep else torch.empty(0, dtype=torch.long)
        self._store(buffer, task, images.index_select(0, index), targets.index_select(0, index), kept)

    def evict_to(self, buffer: "ReplayBuffer", capacity: int) -> None:
        for task in list(self.segments):
            self._truncate(buffer, task)

    def on_task_data_set(self, buffer: "ReplayBuffer", task: str) -> None:
        """Segments = the task's groups in storage order (rows are regrouped, stably, if a group is split)."""
        images, targets = buffer.task_data(task)
        labels = buffer.labels_of(targets) or [None] * len(targets)
        order: Dict[Optional[int], int] = {}
        for label in labels:
            order.setdefault(label, len(order))
        runs = sum(1 for r, label in enumerate(labels) if r == 0 or labels[r - 1] != label)
        if runs > len(order):
            perm = torch.tensor(sorted(range(len(labels)), key=lambda r: order[labels[r]]), dtype=torch.long)
            buffer.replace_task_data(task, {k: v.index_select(0, perm) for k, v in buffer.task_fields(task).items()})
        counts: Dict[Optional[int], int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        self.segments[task] = [[label, counts[label]] for label in order]
        for label in order:
            if (task, label) not in self.groups:
                self.groups.append((task, label))

    def state_dict(self) -> Dict[str, Any]:
        return {"groups": [[t, c] for t, c in self.groups], "segments": {t: [list(s) for s in segs] for t, segs in self.segments.items()}}

    def load_state_dict(self, state: Mapping[str, Any], buffer: "ReplayBuffer") -> None:
        groups = [(str(t), None if c is None else int(c)) for t, c in state.get("groups", [])]
        segments = {str(t): [[None if c is None else int(c), int(n)] for c, n in segs] for t, segs in dict(state.get("segments", {})).items()}
        counts = buffer.counts()
        for task in set(segments) | set(counts):
            stored = sum(n for _, n in segments.get(task, []))
            if stored != counts.get(task, 0):
                raise ValueError(
                    f"HerdingPolicy: checkpoint field 'policy_state.segments' counts {stored} exemplars of task {task!r}, "
                    f"the buffer holds {counts.get(task, 0)}"
                )
        self.groups, self.segments = groups, segments
