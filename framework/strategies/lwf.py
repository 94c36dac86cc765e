"""LwF — Learning without Forgetting (Li & Hoiem, 2017, "Learning without Forgetting", TPAMI): the
new experience's images also go through every old task head of a frozen copy of the model taken at
the end of the previous experience, and the live model's old-head outputs are distilled towards
them (Hinton et al. 2015 knowledge distillation).

Avalanche's ``LwFPlugin`` cannot drive a Lightning module, and MedCL's multi-kind heads
(segmentation, survival) and per-modality routing need their own distillation; hence this strategy.
Configure it as a callback (``class_path: framework.strategies.LwF``); the teacher travels in the checkpoint.
"""
from __future__ import annotations

import copy
import logging
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from framework.core.specs import TaskSpec
from framework.model import MedCLModel
from framework.strategies.base import register_strategy
from framework.strategies.regularizer import Regularizer, number, shared_model

__all__ = ["LwF", "distillable"]

log = logging.getLogger(__name__)


def distillable(old: TaskSpec, current: TaskSpec) -> bool:
    """Whether ``old``'s head can run on ``current``'s images: same ``spatial_dims`` (a 2D head
    cannot read volumes) and same ``in_channels``, 1 and 3 counting as one (the backbone expands
    grayscale to RGB; any other count needs that modality's own patch embedding)."""
    group = lambda c: 3 if c in (1, 3) else c  # noqa: E731
    return old.spatial_dims == current.spatial_dims and group(old.in_channels) == group(current.in_channels)



@register_strategy("lwf")
class LwF(Regularizer):
    """Learning without Forgetting (Li & Hoiem 2017).

    At the end of every experience a frozen copy of the shared model (eval mode, no gradients) is
    kept as the teacher; it replaces the previous one, so it holds every head learned so far.
    During later experiences, the images of the tasks being trained (``tasks_for_epoch``; replayed
    sub-batches are not used) go through every old task head the teacher has, in the teacher and
    in the live model; each pair's :meth:`~framework.heads.TaskHead.distillation_loss` (softened
    with ``temperature``) is averaged.  ``model(images, old_task)`` routes the image tower through
    the old task's modality adapters, in teacher and student alike.  Old heads that cannot read the
    images are skipped (see :func:`distillable`).  Penalty: ``weight * mean`` of those losses.

    Args:
        weight: the penalty strength (>= 0).
        temperature: distillation temperature T (> 0; Li & Hoiem use 2).
    """

    OPTIONS = {"weight": 1.0, "temperature": 2.0}

    def __init__(self, weight: float = 1.0, temperature: float = 2.0, where: str = "LwF") -> None:
        super().__init__(where)
        self.weight = number(f"{where}.weight", weight, 0.0, strict=False)
        self.temperature = number(f"{where}.temperature", temperature, 0.0, strict=True)
        self.teacher: Optional[MedCLModel] = None

    @staticmethod
    def _freeze(model: MedCLModel) -> MedCLModel:
        # the teacher only predicts its heads' outputs: a task router (its frozen tower, its sources) is not kept twice
        model.router = None
        model.eval()
        model.requires_grad_(False)
        return model

    def after_experience(self, trainer, module, experience: int, tasks: List[str]) -> None:
        teacher = copy.deepcopy(shared_model(module))
        teacher.zero_grad(set_to_none=True)
        self.teacher = self._freeze(teacher)
        log.info("LwF: teacher of experience %d kept, with heads %s", experience, teacher.tasks)

    def penalty(self, module, batch) -> Optional[Tensor]:
        if self.teacher is None:
            return None
        model = shared_model(module)
        current = [t for t in module.tasks_for_epoch(module.current_epoch) if t in batch]
        old = [t for t in self.teacher.tasks if t not in current and t in model.specs]
        terms = []
        for task in current:
            images = batch[task]["image"]
            spec = model.specs[task]
            device = next(self.teacher.parameters()).device
            if device != images.device:
                self.teacher.to(images.device)
            for name in old:
                if not distillable(self.teacher.specs[name], spec):
                    continue
                with torch.no_grad():
                    target = self.teacher(images, name)
                terms.append(model.head(name).distillation_loss(model(images, name), target, self.temperature))
        if not terms:
            return None
        return self.weight * torch.stack(terms).mean()

    def state_dict(self) -> Dict[str, Any]:
        if self.teacher is None:
            return {"teacher": None}
        teacher = self.teacher
        return {
            "teacher": {
                "tasks": [teacher.specs[name].to_dict() for name in teacher.tasks],
                "adapters": {name: spec.to_dict() for name, spec in teacher.adapter_of_task.items()},
                "state_dict": {k: v.detach().cpu() for k, v in teacher.state_dict().items()},
            }
        }

    def load_state_dict(self, state: Mapping[str, Any], module=None) -> None:
        """Rebuild the teacher as a fresh model with the stored tasks and adapters of ``module`` (by default
        the module Lightning is restoring, see :meth:`on_load_checkpoint`), then load its weights strictly.

        Raises:
            ValueError: if the stored weights do not fit the rebuilt teacher.
        """
        module = module if module is not None else getattr(self, "_module", None)
        if module is None:
            raise ValueError("LwF.load_state_dict: the LightningModule the teacher belongs to is unknown; pass module=")
        stored = state.get("teacher")
        if stored is None:
            self.teacher = None
            return
        key = f"{self.checkpoint_field}.teacher"
        with module.rebuilding():  # the stored weights follow
            teacher = module.new_model()
            teacher.router = None  # never stored with the teacher (see _freeze)
            for _, spec, adapter in module.stored_tasks(stored, "checkpoint", key=key):  # the same reader as the model's own tasks
                teacher.add_task(spec, adapter)
        try:
            teacher.load_state_dict(stored["state_dict"], strict=True)
        except RuntimeError as err:
            raise ValueError(f"checkpoint field '{key}.state_dict': the weights do not fit the rebuilt teacher: {str(err).splitlines()[0]}") from None
        self.teacher = self._freeze(teacher)
