"""EWC — Elastic Weight Consolidation (Kirkpatrick et al., 2017, "Overcoming catastrophic forgetting
in neural networks", PNAS): a quadratic penalty keeps parameters that mattered for earlier
experiences (large diagonal Fisher information) near the values they had then.

Avalanche's ``EWCPlugin`` follows the same formula but is a plugin of its own training loop, which
cannot drive a Lightning module nor MedCL's per-task heads; hence this strategy.  Configure it as a
callback (``class_path: framework.strategies.EWC``); its state travels in the checkpoint.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor

from framework.core.data_protocol import domain_for
from framework.strategies.base import register_strategy
from framework.strategies.regularizer import Regularizer, number, shared_model

__all__ = ["EWC"]

log = logging.getLogger(__name__)


@register_strategy("ewc")
class EWC(Regularizer):
    """Elastic Weight Consolidation, online form (Kirkpatrick et al. 2017; Schwarz et al. 2018).

    At the end of every experience the diagonal **empirical Fisher** of the experience's training
    loss (the sum of its tasks' head losses, as in ``training_step``) is estimated from at most
    ``fisher_batches`` batches of its training data, in order (``shuffle=False``): the squared
    gradient of each *batch* loss, averaged over the batches.  This is the batch-level empirical
    Fisher that Avalanche's ``EWCPlugin`` computes, not a per-sample one.  The model is put in
    eval mode for it (batch-norm statistics and dropout untouched) and its mode restored
    afterwards; gradients come from ``torch.autograd.grad``, so no parameter's ``.grad`` is touched.

    Parameters covered: every parameter of the shared model that requires a gradient at the end
    of the experience, i.e. what that experience trained (backbone, adapters, and heads, the
    just-trained task's head included); parameters frozen then (a locked text tower, whatever the
    freezing policy froze) get no Fisher entry.  Fishers of successive experiences are **summed**
    into one ('online' EWC) and the anchor ``θ*`` is the parameters' value at the latest
    experience end.  Penalty: ``weight / 2 * Σ_i F_i (θ_i − θ*_i)²`` over the anchored parameters,
    matched by name (parameters created later, e.g. new heads, are not penalised).

    Args:
        weight: λ, the penalty strength (>= 0).
        fisher_batches: at most this many training batches per Fisher estimate (>= 1).
    """

    OPTIONS = {"weight": 1.0, "fisher_batches": 20}

    def __init__(self, weight: float = 1.0, fisher_batches: int = 20, where: str = "EWC") -> None:
        super().__init__(where)
        self.weight = number(f"{where}.weight", weight, 0.0, strict=False)
        if isinstance(fisher_batches, bool) or not isinstance(fisher_batches, int) or fisher_batches < 1:
            raise ValueError(f"{where}.fisher_batches expected an integer >= 1, found {fisher_batches!r}")
        self.fisher_batches = fisher_batches
        #: parameter name -> accumulated diagonal Fisher
        self.fisher: Dict[str, Tensor] = {}
        #: parameter name -> value at the latest experience end
        self.anchor: Dict[str, Tensor] = {}
        self.experiences: List[int] = []

    # ------------------------------------------------------------------ estimation
    @staticmethod
    def train_loader(trainer, task: str):
        """The unshuffled, un-keyed training loader of ``task`` (``{"image", "target"}`` batches)."""
        domain = domain_for(getattr(trainer, "datamodule", None), task, "EWC: estimating the Fisher information")
        return domain.loader("train", keyed=False, shuffle=False)

    def estimate_fisher(self, module, trainer, tasks: Sequence[str]) -> Dict[str, Tensor]:
        """Diagonal empirical Fisher of the tasks' summed loss (see the class docstring)."""
        model = shared_model(module)
        params = {n: p for n, p in model.named_parameters() if p.requires_grad}
        if not params:
            return {}
        fisher = {n: torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}
        names, tensors = list(params), list(params.values())
        batches = 0
        was_training = module.training
        module.eval()
        try:
            with torch.enable_grad():
                for step, subs in enumerate(zip(*(self.train_loader(trainer, t) for t in tasks))):
                    if step >= self.fisher_batches:
                        break
                    loss = None
                    for task, sub in zip(tasks, subs):
                        sub = move_data_to_device(sub, module.device)
                        term = model.head(task).loss(model(sub["image"], task), sub["target"])
                        loss = term if loss is None else loss + term
                    if not loss.requires_grad:  # nothing trainable reaches this loss
                        continue
                    grads = torch.autograd.grad(loss, tensors, allow_unused=True)
                    for name, grad in zip(names, grads):
                        if grad is not None:
                            fisher[name] += grad.detach().float() ** 2
                    batches += 1
        finally:
            module.train(was_training)
        if batches == 0:
            log.warning("EWC: no training batch for tasks %s; their Fisher information is not estimated", list(tasks))
            return {}
        return {n: f / batches for n, f in fisher.items()}

    def after_experience(self, trainer, module, experience: int, tasks: List[str]) -> None:
        new = self.estimate_fisher(module, trainer, list(tasks))
        if not new:
            return
        for name, f in new.items():
            old = self.fisher.get(name)
            self.fisher[name] = f if old is None else old.to(f.device) + f
        params = dict(shared_model(module).named_parameters())
        self.anchor = {n: params[n].detach().clone() for n in self.fisher if n in params}
        self.experiences.append(int(experience))
        log.info("EWC: Fisher of experience %d (%s) over %d parameter tensors", experience, "+".join(tasks), len(new))

    # ------------------------------------------------------------------ penalty
    def penalty(self, module, batch) -> Optional[Tensor]:
        if not self.anchor:
            return None
        total = None
        for name, p in shared_model(module).named_parameters():
            anchor = self.anchor.get(name)
            if anchor is None:
                continue
            f = self.fisher[name]
            if anchor.device != p.device or f.device != p.device:  # restored on the CPU; moved once
                anchor = self.anchor[name] = anchor.to(p.device)
                f = self.fisher[name] = f.to(p.device)
            term = (f * (p - anchor).float() ** 2).sum()
            total = term if total is None else total + term
        return None if total is None else self.weight / 2.0 * total

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {
            "fisher": {n: t.detach().cpu() for n, t in self.fisher.items()},
            "anchor": {n: t.detach().cpu() for n, t in self.anchor.items()},
            "experiences": list(self.experiences),
        }

    def load_state_dict(self, state: Mapping[str, Any], module=None) -> None:
        fisher, anchor = dict(state.get("fisher", {})), dict(state.get("anchor", {}))
        if set(anchor) - set(fisher):
            raise ValueError(f"checkpoint field '{self.checkpoint_field}': anchored parameters without a Fisher entry: {sorted(set(anchor) - set(fisher))[:5]}")
        self.fisher, self.anchor = fisher, anchor
        self.experiences = [int(e) for e in state.get("experiences", [])]
