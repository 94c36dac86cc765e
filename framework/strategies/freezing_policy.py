"""Freezing policies: which parts of a grown model train in an experience (applied by the Freezing strategy, framework/strategies/freezing.py).

UNICON keeps old skills by parameter isolation: the shared backbone stays frozen (or changes only
through per-modality adapters) and every task owns its head.  A policy is applied at the start of
every training epoch, so a resumed run freezes the same parameters as the original one.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Set

from torch import nn

from framework.model import MedCLModel

__all__ = ["FREEZE_POLICIES", "FreezingPolicy"]

#: ``none``: everything trains; ``backbone``: the shared backbone is frozen (adapters and heads
#: train); ``old_heads``: heads of tasks not trained in this experience ("old tasks") are frozen;
#: ``backbone+old_heads``: the backbone, old heads and every adapter an old task uses are frozen,
#: so old tasks compute exactly what they did (only new modalities' adapters and this experience's
#: heads train); ``adapters_only``: the adapters of this experience's modalities and its heads
#: train, even where old tasks share the modality (its old tasks may then move).
FREEZE_POLICIES = ("none", "backbone", "old_heads", "backbone+old_heads", "adapters_only")


class FreezingPolicy:
    """Applies one of :data:`FREEZE_POLICIES` by setting ``requires_grad`` and eval mode.

    Parameters a policy freezes stay in the optimizer (they get no gradient, so AdamW skips them),
    which keeps the optimizer's parameter groups identical across experiences and resumes.  Frozen
    modules are kept in eval mode so batch-norm statistics do not drift either.  Parameters that
    were frozen before the policy first saw them (a locked text tower) are never unfrozen.

    Args:
        policy: one of :data:`FREEZE_POLICIES`.

    Raises:
        ValueError: for an unknown policy.
    """

    def __init__(self, policy: str = "none") -> None:
        if policy not in FREEZE_POLICIES:
            raise ValueError(f"freeze expected one of {list(FREEZE_POLICIES)}, found {policy!r}")
        self.policy = policy
        self._locked: Set[int] = set()   # frozen by the model's own configuration
        self._seen: Set[int] = set()
        self._frozen: Set[int] = set()   # frozen by this policy
        self.frozen_modules: List[nn.Module] = []
        self.trained_modules: List[nn.Module] = []

    def froze(self, param: nn.Parameter) -> bool:
        """Whether this policy (not the model's configuration) froze ``param``."""
        return id(param) in self._frozen

    def apply(self, models: Iterable[MedCLModel], current_tasks: Iterable[str], future_tasks: Iterable[str] = ()) -> Dict[str, int]:
        """Freeze and unfreeze for an experience training ``current_tasks``.

        ``future_tasks`` have heads already (DDP grows every head before training) but are trained
        later: their heads stay frozen and their modalities do not count as old.

        Returns:
            trainable parameter counts: ``total``, ``backbone``, ``adapters``, ``heads``, and ``all``
            (every parameter of the models).
        """
        current, future = set(current_tasks), set(future_tasks)
        counts = dict(total=0, backbone=0, adapters=0, heads=0, all=0)
        self._frozen.clear()
        self.frozen_modules = []
        self.trained_modules = []  # trained inside a frozen module (a task's BatchNorm copies in a frozen tower)
        freeze_backbone = self.policy in ("backbone", "backbone+old_heads", "adapters_only")
        freeze_old_heads = self.policy in ("old_heads", "backbone+old_heads", "adapters_only")
        for model in models:
            current_modalities = {model.specs[t].modality for t in current if t in model.specs}
            old_modalities = {spec.modality for name, spec in model.specs.items() if name not in current | future}
            adapter_params = {m: model.adapters.parameters(m) for m in model.adapters.specs}
            adapter_ids = {id(p) for params in adapter_params.values() for p in params}
            norms = getattr(model, "domain_norms", None)
            adapter_ids |= {id(p) for p in norms.all_parameters()} if norms is not None else set()
            base = [p for p in model.backbone.parameters() if id(p) not in adapter_ids]
            self._set(base, not freeze_backbone, counts, "backbone")
            if freeze_backbone:
                clip = getattr(model.backbone, "clip", None)  # a custom backbone: its whole tower
                self.frozen_modules.append(clip.visual if clip is not None else model.backbone.tower)
            for modality, params in adapter_params.items():
                if self.policy == "adapters_only":
                    train = modality in current_modalities
                elif self.policy == "backbone+old_heads":
                    train = modality not in old_modalities
                else:
                    train = True
                self._set(params, train, counts, "adapters")
            for name, head in model.heads.items():
                train = name not in future and not (freeze_old_heads and name not in current)
                self._set(list(head.parameters()), train, counts, "heads")
                if not train:
                    self.frozen_modules.append(head)
                if norms is not None and name in norms:  # a task's own BatchNorm copies follow its head
                    self._set(norms.parameters(name), train, counts, "adapters")
                    (self.trained_modules if train else self.frozen_modules).extend(norms.modules(name))
        counts["total"] = counts["backbone"] + counts["adapters"] + counts["heads"]
        return counts

    def _set(self, params: List[nn.Parameter], train: bool, counts: Dict[str, int], part: str) -> None:
        for p in params:
            if id(p) not in self._seen:
                self._seen.add(id(p))
                if not p.requires_grad:
                    self._locked.add(id(p))
            counts["all"] += p.numel()
            if id(p) in self._locked:
                continue
            p.requires_grad_(train)
            if train:
                counts[part] += p.numel()
            else:
                self._frozen.add(id(p))

    def set_eval(self) -> None:
        """Put frozen modules in eval mode (call after ``module.train()``); trained modules inside
        them (the current tasks' BatchNorm copies) stay in training mode."""
        for module in self.frozen_modules:
            module.eval()
        for module in self.trained_modules:
            module.train()
