"""Domain/task-specialised learning: an independent model per domain."""
from __future__ import annotations

from typing import List, Tuple, Union

from torch import nn

from framework.adapters import AdapterSpec
from framework.model import MedCLModel
from framework.paradigms.base import MedCLModule
from framework.core.specs import TaskSpec

__all__ = ["SpecializedModule"]


class SpecializedModule(MedCLModule):
    """Specialised learning (paradigm a): one independent backbone + head per domain.

    Every model sees only its own task's sub-batch; all of them train in one ``fit`` over the
    joint batch dict, so the training step is the shared one.  Arguments are those of
    :class:`~framework.paradigms.base.MedCLModule`.
    """

    def build_models(self) -> None:
        self.models = nn.ModuleDict()

    def all_models(self) -> List[MedCLModel]:
        return list(self.models.values())

    def model_for(self, task: str) -> MedCLModel:
        if task not in self.models:
            raise KeyError(f"no specialised model for task {task!r}; models so far: {list(self.models)}")
        return self.models[task]

    def _grow(self, spec: TaskSpec, adapter: Union[str, AdapterSpec, None]) -> None:
        model = self.new_model().to(self.device)
        model.add_task(spec, adapter)
        self.models[spec.name] = model

    def optimizer_groups(self) -> List[Tuple[str, List[nn.Parameter]]]:
        return [(f"model:{name}", self._trainable(model)) for name, model in self.models.items()]
