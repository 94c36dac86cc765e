"""Shared pieces of the regularisation strategies (EWC, LwF)."""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

import pytorch_lightning as pl
from torch import Tensor

from framework.model import MedCLModel
from framework.strategies.base import Batch, Outputs, Strategy

__all__ = ["Regularizer", "CHECKPOINT_KEY", "shared_model", "number"]

#: key of the state of the module's own regularisers (the deprecated ``model.regularizers``) in Lightning checkpoints
CHECKPOINT_KEY = "medcl_regularizers"


def shared_model(module) -> MedCLModel:
    models = module.all_models()
    if len(models) != 1:
        raise ValueError(
            f"regularizers need one model shared by all tasks (ContinualModule); {type(module).__name__} has {len(models)}"
        )
    return models[0]


def number(where: str, value: Any, minimum: float, strict: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        expected = f"a finite number {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{where} expected {expected}, found {value!r}")
    return float(value)



class Regularizer(Strategy):
    """A strategy adding one penalty to the training loss, with state gathered at experience ends.

    Subclasses implement :meth:`penalty`, :meth:`after_experience`, :meth:`state_dict` and
    :meth:`load_state_dict`; they list their options (name -> default) in :attr:`OPTIONS`, and
    ``where`` (e.g. ``"EWC"``, or ``"regularizers.ewc"`` for the deprecated model option) prefixes
    their error messages.
    """

    #: option -> default
    OPTIONS: Dict[str, Any] = {}

    def __init__(self, where: str) -> None:
        super().__init__()
        self.where = where

    @property
    def checkpoint_field(self) -> str:
        """Where this strategy's state is in a checkpoint (for error messages)."""
        return f"{CHECKPOINT_KEY}.{self.name}" if self.where.startswith("regularizers") else f"callbacks.{self.state_key}"

    def penalty(self, module: pl.LightningModule, batch: Batch) -> Optional[Tensor]:
        """The scalar penalty for this training batch, ``None`` while there is nothing to protect."""
        raise NotImplementedError

    def loss_terms(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch, outputs: Outputs) -> Dict[str, Tensor]:
        penalty = self.penalty(module, batch)
        return {} if penalty is None else {self.name: penalty}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Dict[str, Any]) -> None:
        # Lightning calls this just before load_state_dict: the module the state belongs to
        self._module = pl_module
