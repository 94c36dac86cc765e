"""A diverged run stops; it is never saved, reported or loaded as a result.

A learning rate that is too high (or a bad batch) turns the loss into ``nan``/``inf``; the weights
follow one step later.  Left alone, Lightning trains on, saves the non-finite weights as
``last.ckpt`` and the evaluation scores them (a NaN logit's ``argmax`` is class 0: "accuracy
0.062"), so a dead model looks like a poor one.  MedCL checks:

* every training step's loss (:func:`check_loss`): one host sync per step, the same one Lightning's
  progress bar makes;
* the weights before every checkpoint save and every experience-end evaluation
  (:func:`check_module`), so a non-finite model never becomes ``last.ckpt``;
* the weights of every checkpoint it loads (:func:`check_state_dict`: ``--ckpt_path``,
  ``init_from``), so an old diverged checkpoint cannot be tested or grown.

Lightning's ``detect_anomaly`` finds the operation that produced a NaN but costs a backward
pass's worth of checks and does not stop a run or protect checkpoints, hence this module.
"""
from __future__ import annotations

from typing import Any, List, Mapping, Optional

import torch
from torch import Tensor, nn

from framework.core.attachment import attached_trainer

__all__ = ["DivergenceError", "check_loss", "check_module", "check_state_dict", "non_finite_entries"]


class DivergenceError(FloatingPointError):
    """The loss or the weights of a run are not finite (``nan``/``inf``)."""


def non_finite_entries(tensors: Mapping[str, Any], limit: int = 3, nan_only: bool = False) -> List[str]:
    """Names of the floating-point tensors in ``tensors`` that hold a ``nan`` or ``inf`` (at most ``limit``).

    Args:
        nan_only: look for ``nan`` only (buffers and state dicts: an attention mask holds ``-inf`` by design).
    """
    bad: List[str] = []
    for name, value in tensors.items():
        if not isinstance(value, Tensor) or not value.is_floating_point():
            continue
        if bool(torch.isnan(value).any()) if nan_only else not bool(torch.isfinite(value).all()):
            bad.append(name)
            if len(bad) >= limit:
                break
    return bad


def _last_checkpoint(trainer: Any) -> str:
    paths = [getattr(cb, "last_model_path", "") or getattr(cb, "best_model_path", "") for cb in getattr(trainer, "checkpoint_callbacks", [])]
    paths = [p for p in paths if p]
    return f"the last finite checkpoint is kept: {paths[0]}" if paths else "no checkpoint was written before it"


def _where(module: Any) -> str:
    trainer = attached_trainer(module) if isinstance(module, nn.Module) else None
    if trainer is None:
        return ""
    epoch = trainer.current_epoch
    experience = module.experience_of_epoch(epoch) if hasattr(module, "experience_of_epoch") else epoch
    return f"experience {experience}, epoch {epoch}, step {trainer.global_step}"


def check_loss(module: nn.Module, total: Tensor, per_task: Mapping[str, Tensor], regularization: Optional[Tensor] = None) -> None:
    """Stop training when the step's loss is not finite, naming the task, where and what is kept.

    Args:
        module: the training LightningModule (for the position in the stream and the trainer's checkpoints).
        total: the loss about to be back-propagated.
        per_task: each task's loss of this step (to name the culprit).
        regularization: the regularisation term, if any.

    Raises:
        DivergenceError: if ``total`` holds ``nan`` or ``inf``.
    """
    if bool(torch.isfinite(total.detach()).all()):
        return
    culprits = [f"task {task!r} loss {loss.item():g}" for task, loss in per_task.items() if not bool(torch.isfinite(loss.detach()).all())]
    if regularization is not None and not bool(torch.isfinite(regularization.detach()).all()):
        culprits.append(f"regularisation term {regularization.item():g}")
    lr = module.hparams.get("lr") if hasattr(module, "hparams") else None
    raise DivergenceError(
        f"training diverged at {_where(module)}: {', '.join(culprits) or f'loss {total.item():g}'} is not finite "
        f"(lr {lr}); the run stopped, {_last_checkpoint(module.trainer)}. Lower the learning rate or check the data"
    )


def check_module(module: nn.Module, when: str) -> None:
    """Refuse to save or evaluate a model whose parameters or buffers are not finite.

    Args:
        module: the LightningModule.
        when: what was about to happen (``"saving a checkpoint"``, ``"evaluating"``).

    Raises:
        DivergenceError: naming up to three non-finite tensors.
    """
    bad = non_finite_entries(dict(module.named_parameters())) or non_finite_entries(dict(module.named_buffers()), nan_only=True)
    if bad:
        trainer = attached_trainer(module)
        kept = f"; {_last_checkpoint(trainer)}" if trainer is not None else ""
        raise DivergenceError(
            f"training diverged: the weights are not finite (nan/inf in {', '.join(bad)}) at {_where(module)} while {when}; "
            f"nothing was saved or scored{kept}. Lower the learning rate or check the data"
        )


def check_state_dict(state_dict: Mapping[str, Any], where: str) -> None:
    """Refuse a checkpoint whose weights are not finite (written by a run that diverged).

    Raises:
        ValueError: naming ``where`` and up to three non-finite tensors.
    """
    bad = non_finite_entries(state_dict, nan_only=True)
    if bad:
        raise ValueError(
            f"{where}: the checkpoint's weights are not finite (nan in {', '.join(bad)}): it was written by a run that "
            f"diverged and cannot be tested, predicted with, resumed or grown; use an earlier checkpoint of that run"
        )
