"""Joint learning: one model, every domain in every batch."""
from __future__ import annotations

from typing import List, Tuple, Union

from torch import nn

from framework.adapters import AdapterSpec
from framework.model import MedCLModel
from framework.paradigms.base import MedCLModule
from framework.core.specs import TaskSpec

__all__ = ["JointModule", "SharedModelMixin"]


class SharedModelMixin:
    """One :class:`MedCLModel` shared by all tasks (joint and continual learning)."""

    model: MedCLModel

    def build_models(self) -> None:
        self.model = self.new_model()

    def all_models(self) -> List[MedCLModel]:
        return [self.model]

    def model_for(self, task: str) -> MedCLModel:
        self.model.head(task)  # raises a KeyError naming the known tasks
        return self.model

    def _grow(self, spec: TaskSpec, adapter: Union[str, AdapterSpec, None]) -> None:
        self.model.add_task(spec, adapter)

    def optimizer_groups(self) -> List[Tuple[str, List[nn.Parameter]]]:
        return self.model.parameter_groups(self._trainable)


class JointModule(SharedModelMixin, MedCLModule):
    """Joint learning (paradigm b): all domains at once.

    The stream serves every domain in every training batch (Lightning ``CombinedLoader`` in
    ``max_size_cycle`` mode), so one ``fit`` is one experience and the accuracy matrix has one row.
    Arguments are those of :class:`~framework.paradigms.base.MedCLModule`.
    """
