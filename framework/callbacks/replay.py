"""Rehearsal: a replay buffer with pluggable storage policies and the callback that uses it.

Storage policy (which samples to keep) is separated from the replay mechanism (how they are mixed
into batches), as in Avalanche.  The callback fills the buffer from every training batch and adds
keys for earlier tasks to the batch dict *in place* (a Lightning callback cannot replace a batch).
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Any, Dict, Hashable, List, Mapping, MutableMapping, Optional, Tuple

import pytorch_lightning as pl
import torch
from torch import Tensor

__all__ = ["ReplayBuffer", "StoragePolicy", "ReservoirPolicy", "ClassBalancedPolicy", "ReplayCallback"]

log = logging.getLogger(__name__)

Sample = Tuple[str, Tensor, Tensor]  # (task, image, target)


class StoragePolicy(ABC):
    """Decides which incoming samples a :class:`ReplayBuffer` keeps and which they replace."""

    @abstractmethod
    def add(self, buffer: "ReplayBuffer", task: str, image: Tensor, target: Tensor) -> None:
        """Offer one sample to ``buffer``."""

    def state_dict(self) -> Dict[str, Any]:
        return {}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        pass


class ReservoirPolicy(StoragePolicy):
    """Reservoir sampling (Vitter's algorithm R) over the whole stream.

    Every sample seen so far has the same probability ``capacity / seen`` of being in the buffer,
    so tasks are represented in proportion to their training-set sizes.
    """

    def __init__(self) -> None:
        self.seen = 0

    def add(self, buffer: "ReplayBuffer", task: str, image: Tensor, target: Tensor) -> None:
        self.seen += 1
        if len(buffer) < buffer.capacity:
            buffer.items.append((task, image, target))
            return
        slot = int(torch.randint(0, self.seen, (1,), generator=buffer.generator))
        if slot < buffer.capacity:
            buffer.items[slot] = (task, image, target)

    def state_dict(self) -> Dict[str, Any]:
        return {"seen": self.seen}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = int(state.get("seen", 0))


class ClassBalancedPolicy(StoragePolicy):
    """Equal share of the budget for every (task, class) group seen so far.

    When a new group appears the largest groups give up random samples; within a group, samples
    are kept by reservoir sampling.  Targets that are not a single class index (masks, survival
    times) count as one group per task.  The policy keeps an index group -> buffer slots so each
    insertion costs O(number of groups), not O(capacity).
    """

    def __init__(self) -> None:
        self.seen: Dict[Hashable, int] = defaultdict(int)
        self.members: Dict[Hashable, List[int]] = {}

    @staticmethod
    def group_of(task: str, target: Tensor) -> Hashable:
        return (task, int(target)) if target.numel() == 1 else (task, None)

    def add(self, buffer: "ReplayBuffer", task: str, image: Tensor, target: Tensor) -> None:
        group = self.group_of(task, target)
        self.seen[group] += 1
        if len(buffer) < buffer.capacity:
            buffer.items.append((task, image, target))
            self.members.setdefault(group, []).append(len(buffer) - 1)
            return
        own = self.members.setdefault(group, [])
        quota = buffer.capacity // len(self.members)
        if len(own) < quota:
            # make room: evict a random sample of the currently largest group
            largest = max(self.members, key=lambda g: len(self.members[g]))
            victims = self.members[largest]
            k = int(torch.randint(0, len(victims), (1,), generator=buffer.generator))
            slot = victims[k]
            victims[k] = victims[-1]
            victims.pop()
            buffer.items[slot] = (task, image, target)
            own.append(slot)
            return
        # group already at quota: reservoir sampling within the group
        j = int(torch.randint(0, self.seen[group], (1,), generator=buffer.generator))
        if j < len(own):
            buffer.items[own[j]] = (task, image, target)
        elif not own:
            del self.members[group]

    def state_dict(self) -> Dict[str, Any]:
        return {
            "seen": [[t, c, n] for (t, c), n in self.seen.items()],
            "members": [[t, c, slots] for (t, c), slots in self.members.items()],
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.seen = defaultdict(int, {(t, c): int(n) for t, c, n in state.get("seen", [])})
        self.members = {(t, c): [int(i) for i in slots] for t, c, slots in state.get("members", [])}


class ReplayBuffer:
    """A fixed budget of stored ``(task, image, target)`` exemplars on the CPU.

    Args:
        capacity: maximum number of stored samples, across all tasks.
        policy: storage policy; :class:`ReservoirPolicy` by default.
        seed: seed of the buffer's own random generator (insertion and sampling).

    Raises:
        ValueError: if ``capacity`` < 1.
    """

    def __init__(self, capacity: int, policy: Optional[StoragePolicy] = None, seed: int = 0) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ValueError(f"ReplayBuffer: capacity expected a positive integer, found {capacity!r}")
        self.capacity = capacity
        self.policy = policy if policy is not None else ReservoirPolicy()
        self.generator = torch.Generator().manual_seed(int(seed))
        self.items: List[Sample] = []

    def __len__(self) -> int:
        return len(self.items)

    def add_batch(self, task: str, images: Tensor, targets: Tensor) -> None:
        """Offer every sample of a batch (copied to the CPU) to the storage policy."""
        images = images.detach().to("cpu", copy=True)
        targets = targets.detach().to("cpu", copy=True)
        for image, target in zip(images, targets):
            self.policy.add(self, task, image, target)

    def counts(self) -> Dict[str, int]:
        """Stored samples per task."""
        out: Dict[str, int] = defaultdict(int)
        for task, _, _ in self.items:
            out[task] += 1
        return dict(out)

    def class_counts(self, task: str) -> Dict[int, int]:
        out: Dict[int, int] = defaultdict(int)
        for t, _, y in self.items:
            if t == task and y.numel() == 1:
                out[int(y)] += 1
        return dict(out)

    def sample(self, n: int, exclude: Tuple[str, ...] = ()) -> Dict[str, Dict[str, Tensor]]:
        """Draw up to ``n`` stored samples uniformly, skipping tasks in ``exclude``.

        Returns:
            ``{task: {"image": (k, C, H, W), "target": (k, ...)}}`` for the tasks drawn.
        """
        pool = [i for i, (task, _, _) in enumerate(self.items) if task not in exclude]
        if not pool or n <= 0:
            return {}
        take = torch.randperm(len(pool), generator=self.generator)[: min(n, len(pool))]
        grouped: Dict[str, List[Sample]] = defaultdict(list)
        for k in take.tolist():
            task, image, target = self.items[pool[k]]
            grouped[task].append((task, image, target))
        return {
            task: {"image": torch.stack([s[1] for s in samples]), "target": torch.stack([s[2] for s in samples])}
            for task, samples in grouped.items()
        }

    def state_dict(self) -> Dict[str, Any]:
        """Tensors grouped per task (compact, loadable with ``torch.load(weights_only=True)``)."""
        per_task: Dict[str, Dict[str, List[Tensor]]] = {}
        order: List[List[Any]] = []
        for task, image, target in self.items:
            entry = per_task.setdefault(task, {"image": [], "target": []})
            order.append([task, len(entry["image"])])
            entry["image"].append(image)
            entry["target"].append(target)
        return {
            "capacity": self.capacity,
            "policy": type(self.policy).__name__,
            "policy_state": self.policy.state_dict(),
            "generator": self.generator.get_state(),
            "order": order,
            "tasks": {t: {"image": torch.stack(v["image"]), "target": torch.stack(v["target"])} for t, v in per_task.items()},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore from :meth:`state_dict`.

        Raises:
            ValueError: if the stored policy or capacity differs from this buffer's.
        """
        if state.get("policy") != type(self.policy).__name__:
            raise ValueError(
                f"ReplayBuffer: checkpoint field 'policy' is {state.get('policy')!r}, this buffer uses {type(self.policy).__name__}"
            )
        if int(state.get("capacity", -1)) != self.capacity:
            raise ValueError(f"ReplayBuffer: checkpoint field 'capacity' is {state.get('capacity')}, this buffer has {self.capacity}")
        tasks = state.get("tasks", {})
        self.items = [(task, tasks[task]["image"][k], tasks[task]["target"][k]) for task, k in state.get("order", [])]
        self.policy.load_state_dict(state.get("policy_state", {}))
        self.generator.set_state(state["generator"])


POLICIES = {"reservoir": ReservoirPolicy, "class_balanced": ClassBalancedPolicy}


class ReplayCallback(pl.Callback):
    """Rehearsal for continual learning (paradigm d).

    Before each training step the current batch is offered to the buffer, then ``replay_batch_size``
    stored exemplars of *other* tasks are added to the batch dict under their task keys, so the
    shared ``training_step`` also computes their losses.  The buffer travels in the checkpoint.

    In multi-GPU runs every rank fills its own buffer and the checkpoint keeps rank 0's, which
    every rank restores on resume.

    Args:
        capacity: buffer budget in samples (all tasks together).
        policy: ``"reservoir"`` or ``"class_balanced"``.
        replay_batch_size: exemplars mixed into each training batch.
        seed: seed of the buffer's random generator.

    Raises:
        ValueError: on an unknown policy or a negative ``replay_batch_size``.
    """

    def __init__(self, capacity: int = 500, policy: str = "reservoir", replay_batch_size: int = 32, seed: int = 0) -> None:
        super().__init__()
        if policy not in POLICIES:
            raise ValueError(f"ReplayCallback: policy expected one of {sorted(POLICIES)}, found {policy!r}")
        if isinstance(replay_batch_size, bool) or not isinstance(replay_batch_size, int) or replay_batch_size < 0:
            raise ValueError(f"ReplayCallback: replay_batch_size expected an integer >= 0, found {replay_batch_size!r}")
        self.policy_name = policy
        self.replay_batch_size = replay_batch_size
        self.buffer = ReplayBuffer(capacity, POLICIES[policy](), seed=seed)

    @property
    def state_key(self) -> str:
        # Fixed key: resuming with another capacity or policy must fail loudly in
        # load_state_dict, not silently start from an empty buffer under a new key.
        return "ReplayCallback"

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: MutableMapping[str, Any], batch_idx: int) -> None:
        if not isinstance(batch, MutableMapping):
            raise TypeError(f"ReplayCallback expects dict batches keyed by task, found {type(batch).__name__}")
        current = tuple(batch.keys())
        replay = self.buffer.sample(self.replay_batch_size, exclude=current)
        for task, sub in batch.items():
            self.buffer.add_batch(task, sub["image"], sub["target"])
        device = next(iter(batch.values()))["image"].device
        for task, sub in replay.items():
            batch[task] = {k: v.to(device) for k, v in sub.items()}

    def on_experience_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, experience: int, tasks: List[str]) -> None:
        counts = self.buffer.counts()
        log.info("replay buffer after experience %d: %d/%d samples %s", experience, len(self.buffer), self.buffer.capacity, counts)

    def state_dict(self) -> Dict[str, Any]:
        return {"buffer": self.buffer.state_dict(), "replay_batch_size": self.replay_batch_size}

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.buffer.load_state_dict(state_dict["buffer"])
