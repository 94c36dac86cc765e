"""Calls the strategy hooks for the LightningModule (see :mod:`framework.strategies.base`).

The strategies of a run are the module's own (the freezing policy, from ``model.freeze``; EWC and
LwF given the deprecated way, ``model.regularizers``) and every :class:`Strategy` in
``trainer.callbacks``, in list order.  The module's own come first in ``before_*`` hooks and last in
``after_experience``, so they wrap the configured ones.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Dict, List, Sequence

import pytorch_lightning as pl
from torch import Tensor

from framework.backbone.tokens import TokenHook
from framework.core.attachment import attached_trainer
from framework.precision import trainer_precision
from framework.strategies.base import Batch, ExperienceCallback, Outputs, Strategy

__all__ = ["StrategyRunner"]

log = logging.getLogger(__name__)


def _overrides(strategy: Strategy, hook: str) -> bool:
    return getattr(type(strategy), hook) is not getattr(Strategy, hook)


class StrategyRunner:
    """The hook dispatcher of one LightningModule.

    Args:
        module: the paradigm module; its ``own_strategies`` list holds the strategies it built itself.
    """

    def __init__(self, module: pl.LightningModule) -> None:
        self.module = module
        self._token_hooks: Dict[int, TokenHook] = {}
        self._warned_legacy = False

    # ------------------------------------------------------------------ who takes part
    def _callbacks(self) -> List[pl.Callback]:
        trainer = attached_trainer(self.module)
        return list(trainer.callbacks) if trainer is not None else []

    def strategies(self) -> List[Strategy]:
        """The module's own strategies, then the trainer's, in order."""
        return list(self.module.own_strategies) + [c for c in self._callbacks() if isinstance(c, Strategy)]

    def _experience_callbacks(self, hook: str) -> List[pl.Callback]:
        configured = [c for c in self._callbacks() if isinstance(c, ExperienceCallback)]
        legacy_name = {"before_experience": "on_experience_start", "after_experience": "on_experience_end"}[hook]
        legacy = [c for c in self._callbacks() if not isinstance(c, ExperienceCallback) and callable(getattr(c, legacy_name, None))]
        if legacy and not self._warned_legacy:
            self._warned_legacy = True
            log.warning(
                "callbacks %s define %s(...) without subclassing framework.strategies.ExperienceCallback; it is still called, "
                "but rename it to %s and subclass ExperienceCallback (or Strategy)", [type(c).__name__ for c in legacy], legacy_name, hook,
            )
        ordered = [c for c in self._callbacks() if c in configured or c in legacy]
        own = list(self.module.own_strategies)
        if hook == "before_experience":
            return own + ordered
        # a strategy that builds what the experience-end evaluation reads (the task router) runs before it
        first = [s for s in own if getattr(s, "prepares_evaluation", False)]
        return first + ordered + [s for s in own if s not in first]

    # ------------------------------------------------------------------ setup
    def check(self) -> None:
        """Every strategy's :meth:`~Strategy.check_module` (``fit`` setup)."""
        for strategy in self.strategies():
            strategy.check_module(self.module)

    def attach(self) -> None:
        """Register the strategies' own parameters with the module and hook the image towers' token
        sequences (``setup``, every stage, before a checkpoint's weights are loaded)."""
        module = self.module
        for strategy in self.strategies():
            owned = strategy.trainable_module(module)
            if owned is not None:
                key = strategy.state_key
                if key in module.strategy_modules and module.strategy_modules[key] is not owned:
                    raise ValueError(f"two strategies of class {key} in one run; keep one")
                module.strategy_modules[key] = owned.to(module.device)
        self.hook_towers()

    def hook_towers(self) -> None:
        """Install the token hook on every model's image tower (once per tower) if a strategy uses it."""
        users = [s for s in self.strategies() if _overrides(s, "tokens")]
        if not users:
            return
        for model in self.module.all_models():
            tower = model.image_tower
            if id(tower) not in self._token_hooks:
                self._token_hooks[id(tower)] = TokenHook(tower, self._tokens)

    def _tokens(self, tokens: Tensor) -> Tensor:
        for strategy in self.strategies():
            if _overrides(strategy, "tokens"):
                tokens = strategy.tokens(self.module, tokens)
        return tokens

    # ------------------------------------------------------------------ experiences
    def experience_hook(self, hook: str, experience: int, tasks: Sequence[str]) -> None:
        trainer = self.module.trainer
        legacy_name = {"before_experience": "on_experience_start", "after_experience": "on_experience_end"}[hook]
        for callback in self._experience_callbacks(hook):
            fn = getattr(callback, hook) if isinstance(callback, ExperienceCallback) else getattr(callback, legacy_name)
            key = getattr(callback, "state_key", type(callback).__name__)
            # named like Lightning's own callback hooks, so `--trainer.profiler simple` times them
            with trainer.profiler.profile(f"[Callback]{key}.{hook}"), trainer_precision(trainer):
                fn(trainer, self.module, experience, list(tasks))
        if hook == "before_experience":
            self.hook_towers()  # a paradigm that builds a model per task (specialised) grew one

    # ------------------------------------------------------------------ training step
    @staticmethod
    def _timed(trainer, strategy: Strategy, hook: str):
        # "[MedCLStrategy]<key>.<hook>" (Lightning names its own strategy "[Strategy]..."): `--trainer.profiler simple`
        # times the per-step hooks (inside the training step); a step run outside a trainer is not timed
        return contextlib.nullcontext() if trainer is None else trainer.profiler.profile(f"[MedCLStrategy]{strategy.state_key}.{hook}")

    def before_forward(self, batch: Batch) -> Batch:
        trainer = attached_trainer(self.module)
        for strategy in self.strategies():
            if _overrides(strategy, "before_forward"):
                with self._timed(trainer, strategy, "before_forward"):
                    batch = strategy.before_forward(trainer, self.module, batch)
                if not isinstance(batch, dict):
                    raise TypeError(f"{type(strategy).__name__}.before_forward must return the batch dict, returned {type(batch).__name__}")
        return batch

    def after_forward(self, batch: Batch, outputs: Outputs) -> None:
        trainer = attached_trainer(self.module)
        for strategy in self.strategies():
            if _overrides(strategy, "after_forward"):
                with self._timed(trainer, strategy, "after_forward"):
                    strategy.after_forward(trainer, self.module, batch, outputs)

    def loss_terms(self, batch: Batch, outputs: Outputs) -> Dict[str, Tensor]:
        """Every strategy's named loss terms, in strategy order.

        Raises:
            ValueError: if two strategies return a term of the same name.
        """
        trainer = attached_trainer(self.module)
        terms: Dict[str, Tensor] = {}
        for strategy in self.strategies():
            if not _overrides(strategy, "loss_terms"):
                continue
            with self._timed(trainer, strategy, "loss_terms"):
                returned = strategy.loss_terms(trainer, self.module, batch, outputs) or {}
            for name, value in returned.items():
                if value is None:
                    continue
                if name in terms:
                    raise ValueError(f"loss term {name!r} returned by two strategies ({type(strategy).__name__} and an earlier one); name them apart")
                terms[name] = value
        return terms

    def after_backward(self) -> None:
        trainer = attached_trainer(self.module)
        for strategy in self.strategies():
            if _overrides(strategy, "after_backward"):
                with self._timed(trainer, strategy, "after_backward"):
                    strategy.after_backward(trainer, self.module)

    def trainable_groups(self, select) -> List[tuple]:
        """``(f"strategy:{key}", params)`` for every strategy module registered at setup."""
        return [(f"strategy:{key}", select(owned)) for key, owned in self.module.strategy_modules.items()]
