"""A new buffer policy, "first_come": every task keeps its first samples, an equal share of the capacity."""
from __future__ import annotations

from typing import Dict, List

from framework.replay import StoragePolicy, register_policy


@register_policy("first_come")
class FirstComePolicy(StoragePolicy):
    """Each task seen so far gets ``capacity // tasks`` rows, filled with its first samples; a new task
    makes room by dropping the latest-stored samples of the largest tasks."""

    def __init__(self) -> None:
        self.tasks: List[str] = []

    def add_batch(self, buffer, task, batch, labels) -> None:
        if task not in self.tasks:
            self.tasks.append(task)
        share = buffer.capacity // len(self.tasks)
        plan = buffer.plan(task, len(batch["image"]))
        sizes: Dict[str, int] = {t: n for t, n in buffer.counts().items() if t != task}
        for i in range(len(batch["image"])):
            if plan.members >= share:
                break
            if plan.total >= buffer.capacity:
                largest = max(sizes, key=sizes.get)
                sizes[largest] -= 1
                plan.evict(largest, sizes[largest])  # its last row: the others keep their order
            plan.append(i)
        buffer.commit(plan, batch)

    def evict_to(self, buffer, capacity: int) -> None:
        sizes = buffer.counts()
        rows: Dict[str, List[int]] = {}
        for _ in range(len(buffer) - capacity):
            largest = max(sizes, key=sizes.get)
            sizes[largest] -= 1
            rows.setdefault(largest, []).append(sizes[largest])
        buffer.remove(rows)

    def state_dict(self):
        return {"tasks": list(self.tasks)}

    def load_state_dict(self, state, buffer) -> None:
        self.tasks = [str(t) for t in state.get("tasks", [])]
