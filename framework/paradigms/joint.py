"""Joint learning: one model, every domain in every batch."""
from __future__ import annotations

from typing import List, Tuple

from torch import nn

from framework.model import MedCLModel
from framework.paradigms.base import MedCLModule
from framework.specs import TaskSpec

__all__ = ["JointModule", "SharedModelMixin"]


class SharedModelMixin:
    """One :class:`MedCLModel` shared by all tasks (joint and continual learning)."""

    model: MedCLModel

    def model_for(self, task: str) -> MedCLModel:
        self.model.head(task)  # raises a KeyError naming the known tasks
        return self.model

    def _grow(self, spec: TaskSpec) -> None:
        self.model.add_task(spec)

    def optimizer_groups(self) -> List[Tuple[str, List[nn.Parameter]]]:
        groups = [("backbone", self._trainable(self.model.backbone))]
        groups += [(f"head:{name}", self._trainable(head)) for name, head in self.model.heads.items()]
        return groups


class JointModule(SharedModelMixin, MedCLModule):
    """Joint learning (paradigm b): all domains at once.

    The stream serves every domain in every training batch (Lightning ``CombinedLoader`` in
    ``max_size_cycle`` mode), so one ``fit`` is one experience and the accuracy matrix has one row.
    Arguments are those of :class:`~framework.paradigms.base.MedCLModule`.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.model = self.new_model()
