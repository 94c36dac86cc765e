"""A replay buffer's checkpoint state: compact per-task tensors of every stored field, the budget, the
policy's state and the generator's, loadable with ``torch.load(weights_only=True)``."""
from __future__ import annotations

from typing import Any, Dict, Mapping

from torch import Tensor

from framework.replay.storage import REQUIRED_FIELDS, TaskStore

__all__ = ["BufferStateMixin", "STATE_FORMAT"]

#: version of :meth:`BufferStateMixin.state_dict`'s layout
STATE_FORMAT = 2


class BufferStateMixin:
    """``state_dict`` / ``load_state_dict`` of :class:`~framework.replay.buffer.ReplayBuffer`."""

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
            "tasks": {t: {k: v.clone() for k, v in s.view().items()} for t, s in self._stores.items()},
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
        stores: Dict[str, TaskStore] = {}
        for task, data in dict(state.get("tasks", {})).items():
            images = data.get("image")
            ok = isinstance(images, Tensor) and isinstance(data.get("target"), Tensor)
            if not ok or any(not isinstance(v, Tensor) or len(v) != len(images) for v in data.values()):
                raise ValueError(f"ReplayBuffer: checkpoint field 'tasks.{task}' expected 'image', 'target' (and extra field) tensors of one length")
            fields = {"image": images, "target": data["target"], **{k: v for k, v in data.items() if k not in REQUIRED_FIELDS}}
            stores[task] = TaskStore({k: v.to("cpu").contiguous() for k, v in fields.items()}, len(images))
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
