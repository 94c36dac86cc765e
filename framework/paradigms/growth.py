"""Growth: new task heads (and adapters) during a run, and the optimizer that follows them."""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, List, Union

import torch
from torch import nn

from framework.adapters import AdapterSpec
from framework.core.attachment import attached_trainer
from framework.core.specs import TaskSpec

__all__ = ["GrowthMixin", "OPTIMIZER_ON_NEW_TASK", "default_optimizer"]

log = logging.getLogger(__name__)

OPTIMIZER_ON_NEW_TASK = ("extend", "reset")


def default_optimizer(params: Iterable[Dict[str, Any]], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """MedCL's default: AdamW over the named parameter groups."""
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


class GrowthMixin:
    """``add_task`` and the optimizer (a part of :class:`~framework.paradigms.base.MedCLModule`)."""

    # ------------------------------------------------------------------ growth
    def add_task(self, spec: TaskSpec, adapter: Union[str, AdapterSpec, None] = "auto") -> None:
        """Grow the model by a task; the only way new heads (and adapters) appear.

        During ``fit`` the optimizer is extended or reset according to ``optimizer_on_new_task``.

        Raises:
            ValueError: if the task already exists.
        """
        if spec.name in self.task_specs:
            raise ValueError(f"{type(self).__name__}.add_task: task {spec.name!r} already exists (tasks: {list(self.task_specs)})")
        self._grow(spec, adapter)
        self.task_specs[spec.name] = spec
        head = self.model_for(spec.name).head(spec.name)
        for stage in ("val", "test"):
            self.metrics[f"{stage}_{spec.name}"] = head.make_metrics().clone(prefix=f"{stage}/{spec.name}/")
        self.metrics.to(self.device)  # logged with their attribute names (steps.py), so Lightning needs no cache of them
        self._update_optimizer_for(spec.name)

    def _update_optimizer_for(self, task: str) -> None:
        trainer = attached_trainer(self)
        if trainer is None or not trainer.optimizers:
            return
        if self.hparams.optimizer_on_new_task == "reset":
            trainer.strategy.setup_optimizers(trainer)
            log.info("task %r added: optimizer rebuilt (optimizer_on_new_task='reset', Adam state dropped)", task)
            return
        optimizer = trainer.optimizers[0]
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for name, params in self.optimizer_groups():
            new = [p for p in params if id(p) not in known]
            if new:
                optimizer.add_param_group({"params": new, "name": name})
        log.info("task %r added: optimizer extended with its parameters (other Adam state kept)", task)

    def ensure_tasks(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.task_specs:
                self.add_task(self.stream_specs[name])

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        """The configured optimizer (``model.optimizer``; default AdamW with ``lr`` and ``weight_decay``) over
        one named parameter group per part of the model (backbone, each adapter, each head, each
        strategy's own parameters), and the configured ``model.lr_scheduler``, stepped every epoch.

        Raises:
            ValueError: if nothing is trainable.
        """
        groups = [{"params": params, "name": name} for name, params in self.optimizer_groups() + self.strategy_runner.trainable_groups(self._trainable) if params]
        if not groups:
            raise ValueError(f"{type(self).__name__}: nothing to train (every parameter is frozen and no head exists)")
        factory = self.optimizer_factory
        optimizer = default_optimizer(groups, self.hparams.lr, self.hparams.weight_decay) if factory is None else factory(groups)
        scheduler_factory = self.scheduler_factory
        if scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler_factory(optimizer), "interval": "epoch"}}

    def _trainable(self, module: nn.Module) -> List[nn.Parameter]:
        """Parameters the optimizer holds: trainable ones, and those only the freezing policy froze
        (so parameter groups stay the same whatever the current experience freezes)."""
        return [p for p in module.parameters() if p.requires_grad or self.freezing.froze(p)]
