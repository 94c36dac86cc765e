"""Freezing as a strategy: the model's freezing policy (``model.freeze``) applied at every experience."""
from __future__ import annotations

from typing import Dict, List

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from framework.strategies.freezing_policy import FreezingPolicy
from framework.strategies.base import Strategy, register_strategy

__all__ = ["Freezing"]


@register_strategy("freezing")
class Freezing(Strategy):
    """Applies a :class:`~framework.strategies.freezing_policy.FreezingPolicy` when an experience starts (and when a
    run resumes inside one, so it freezes what the original run froze).

    Every paradigm module builds one from its ``freeze`` option (it is one of the module's own
    strategies), because the optimizer's parameter groups and ``train()`` depend on it.

    Args:
        policy: one of :data:`~framework.strategies.freezing_policy.FREEZE_POLICIES`.

    Raises:
        ValueError: for an unknown policy.
    """

    def __init__(self, policy: str = "none") -> None:
        super().__init__()
        self.rules = FreezingPolicy(policy)

    @property
    def policy(self) -> str:
        return self.rules.policy

    def froze(self, param: nn.Parameter) -> bool:
        """Whether the policy (not the model's configuration) froze ``param``."""
        return self.rules.froze(param)

    def set_eval(self) -> None:
        """Frozen modules back to eval mode (after ``module.train()``)."""
        self.rules.set_eval()

    def before_experience(self, trainer: pl.Trainer, module: pl.LightningModule, experience: int, tasks: List[str]) -> None:
        counts: Dict[str, int] = self.rules.apply(module.all_models(), tasks, module.future_tasks(experience))
        self.rules.set_eval()
        if experience not in module.trainable_counts or module.experience_of_epoch(module.current_epoch) * module.epochs_per_experience() == module.current_epoch:
            module.trainable_counts[experience] = counts
            rank_zero_info(
                f"experience {experience} ({'+'.join(tasks)}), freeze={self.policy!r}: "
                f"{counts['total']:,} trainable parameters of {counts['all']:,} "
                f"(backbone {counts['backbone']:,}, adapters {counts['adapters']:,}, heads {counts['heads']:,})"
            )

    def check_module(self, module: pl.LightningModule) -> None:
        if self is not getattr(module, "freezing", None):
            raise ValueError(
                f"Freezing(policy={self.policy!r}) is listed under trainer.callbacks, but the freezing policy is the model's own "
                f"(the optimizer's groups depend on it): remove it there and set model.init_args.freeze: {self.policy}"
            )

    def describe(self) -> str:
        return f"Freezing(policy={self.policy!r})"

