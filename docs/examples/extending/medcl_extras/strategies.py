"""A new strategy, "l2_init" (Kumar et al. 2023, "Maintaining Plasticity in Continual Learning via
Regenerative Regularization"): a penalty ``weight / 2 * ||theta - theta_0||^2`` towards the weights
the run started from."""
from __future__ import annotations

from typing import Dict

import torch

from framework.strategies import Strategy, register_strategy


@register_strategy("l2_init")
class L2Init(Strategy):
    """Args:
        weight: the penalty strength (>= 0).

    Raises:
        ValueError: on a negative or non-numeric weight.
    """

    def __init__(self, weight: float = 0.01) -> None:
        super().__init__()
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            raise ValueError(f"L2Init: weight expected a number >= 0, found {weight!r}")
        self.weight = float(weight)
        self.start: Dict[str, torch.Tensor] = {}

    def before_experience(self, trainer, module, experience, tasks) -> None:
        for name, p in module.named_parameters():  # new heads join the anchor when they appear
            if name not in self.start:
                self.start[name] = p.detach().clone()

    def loss_terms(self, trainer, module, batch, outputs):
        terms = [((p - self.start[n].to(p.device)) ** 2).sum() for n, p in module.named_parameters() if p.requires_grad and n in self.start]
        return {"l2_init": self.weight / 2 * torch.stack(terms).sum()} if terms else {}

    def state_dict(self):
        return {"start": {n: t.cpu() for n, t in self.start.items()}}

    def load_state_dict(self, state_dict) -> None:
        self.start = dict(state_dict.get("start", {}))
