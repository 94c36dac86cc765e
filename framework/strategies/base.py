"""The strategy API: Lightning callbacks with named continual-learning hooks.

A :class:`Strategy` is a ``pytorch_lightning.Callback`` (so it is configured as one more
``class_path`` in ``trainer.callbacks``, and its ``state_dict`` travels in the checkpoint) with the
hooks of Avalanche's plugin vocabulary, adapted to MedCL's keyed batches
(``{task: {"image", "target", ...}}``) and per-task heads.  The LightningModule calls them
(:mod:`framework.strategies.runner`), in this order for every training step::

    batch   = before_forward(trainer, module, batch)      # e.g. replay adds old tasks' exemplars
    outputs = {task: model(batch[task]["image"], task)}    # one forward per task
    after_forward(trainer, module, batch, outputs)         # e.g. DER++ stores the logits
    loss    = Σ head losses + Σ loss_terms(trainer, module, batch, outputs).values()
    after_backward(trainer, module)                        # gradients are there (Lightning's on_after_backward)

and around experiences ``before_experience`` (its first epoch, and when a run resumes inside it)
and ``after_experience`` (after its last epoch, before the epoch's checkpoint is written).
``tokens(module, tokens)`` sees the image tower's token sequence (prompt methods, ViT towers).
A strategy that learns parameters of its own (prompts) returns them from :meth:`Strategy.trainable_module`.

Every hook is optional; a strategy overrides only what it needs.
"""
from __future__ import annotations

from typing import ClassVar, Dict, List, Mapping, MutableMapping, Optional

import pytorch_lightning as pl
from torch import Tensor, nn

from framework.core.registry import STRATEGIES

__all__ = ["ExperienceCallback", "Strategy", "register_strategy", "Batch", "Outputs"]

#: ``{task: {"image": ..., "target": ..., ...}}``
Batch = MutableMapping[str, MutableMapping[str, Tensor]]
#: ``{task: raw head outputs}`` (logits, log-risks, mask logits)
Outputs = Mapping[str, Tensor]


class ExperienceCallback(pl.Callback):
    """A callback told when an experience (one domain of the stream, or one joint step) starts and ends.

    The experience index and its tasks come from the paradigm
    (:meth:`~framework.paradigms.base.MedCLModule.experiences`).
    """

    def before_experience(self, trainer: pl.Trainer, module: pl.LightningModule, experience: int, tasks: List[str]) -> None:
        """At the start of ``experience`` (its first training epoch), and when a run resumes inside it."""

    def after_experience(self, trainer: pl.Trainer, module: pl.LightningModule, experience: int, tasks: List[str]) -> None:
        """After the last training epoch of ``experience``, before that epoch's checkpoint is written."""


class Strategy(ExperienceCallback):
    """A continual-learning strategy: replay, a regulariser, a prompt method, ... (see the module docstring).

    Subclasses set :attr:`name` (the name in :data:`~framework.core.registry.STRATEGIES` and in
    logged loss terms, ``train/<term>``) and override the hooks they need.
    """

    #: registry name (``@register_strategy("der")`` sets it)
    name: ClassVar[str] = ""

    @property
    def state_key(self) -> str:
        # one instance of a strategy per run: a fixed key, so resuming with changed options fails in
        # load_state_dict instead of silently starting from an empty state under a new key
        return type(self).__name__

    # ------------------------------------------------------------------ training step
    def before_forward(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch) -> Batch:
        """The batch to train on (return it, changed or not); may add tasks (replayed exemplars)."""
        return batch

    def after_forward(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch, outputs: Outputs) -> None:
        """After the forward passes: ``outputs[task]`` are the head outputs of ``batch[task]`` (with gradients)."""

    def loss_terms(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch, outputs: Outputs) -> Dict[str, Tensor]:
        """Named scalar terms added to the training loss (logged as ``train/<name>``); none by default."""
        return {}

    def after_backward(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        """After the backward pass, before the optimizer step (gradients can be read or changed)."""

    # ------------------------------------------------------------------ the image tower
    def tokens(self, module: pl.LightningModule, tokens: Tensor) -> Tensor:
        """The image tower's token sequence ``(B, 1 + N, width)`` (class token first) before its
        transformer blocks; return it, or a longer one (prompts after the class token), for ViT towers."""
        return tokens

    def trainable_module(self, module: pl.LightningModule) -> Optional[nn.Module]:
        """Parameters this strategy learns (e.g. a prompt pool, built for ``module``'s tower): the
        LightningModule registers the returned module (moved to its device, in its optimizer and its
        checkpoint) at setup; ``None`` for none.  Called once per setup: return the same module each time."""
        return None

    # ------------------------------------------------------------------ checks
    def check_module(self, module: pl.LightningModule) -> None:
        """Refuse, with a ``ValueError`` naming the setting, a paradigm or model this strategy cannot serve
        (called at ``fit`` setup)."""

    def describe(self) -> str:
        """One line for logs: the class and its options."""
        return type(self).__name__


def register_strategy(name: str):
    """Class decorator: register a :class:`Strategy` under ``name`` (sets ``cls.name``).

    Raises:
        ValueError: if the class is not a Strategy or the name is taken by another class.
    """
    return STRATEGIES.subclass_decorator(name, Strategy, "register_strategy")
