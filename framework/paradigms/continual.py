"""Continual learning: domains arrive one after another; the model grows a head per domain."""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional

from torch import Tensor

from framework.paradigms.base import MedCLModule
from framework.paradigms.joint import SharedModelMixin
from framework.paradigms.regularizers import CHECKPOINT_KEY as REGULARIZERS_KEY
from framework.paradigms.regularizers import REGULARIZERS, build_regularizers
from framework.precision import trainer_precision

__all__ = ["ContinualModule"]

log = logging.getLogger(__name__)


class ContinualModule(SharedModelMixin, MedCLModule):
    """Continual learning (paradigm c; with :class:`~framework.callbacks.ReplayCallback`, paradigm d).

    One ``fit`` covers the whole stream: epoch ``e`` belongs to experience
    ``e // epochs_per_experience``, so ``trainer.max_epochs`` must equal
    ``len(stream) * epochs_per_experience`` and the trainer must reload dataloaders every epoch.
    Resuming from any checkpoint then continues the stream where it stopped.

    Args:
        epochs_per_experience: training epochs spent on each domain.
        regularizers: regularisation strategies and their options, any of
            :data:`~framework.paradigms.regularizers.REGULARIZERS`, e.g.
            ``{"ewc": {"weight": 100.0, "fisher_batches": 20}, "lwf": {"weight": 1.0, "temperature": 2.0}}``
            (see :mod:`framework.paradigms.regularizers`).  They combine with each other and with
            replay; each penalty is logged as ``train/<name>`` and their sum as ``train/regularization``.
        **kwargs: see :class:`~framework.paradigms.base.MedCLModule`.

    Raises:
        ValueError: if ``epochs_per_experience`` < 1, a regulariser or one of its options is unknown
            or invalid, or (at ``fit``) the trainer settings do not match the stream.
    """

    def __init__(self, epochs_per_experience: int = 1, regularizers: Optional[Dict[str, Dict[str, Any]]] = None, **kwargs) -> None:
        if isinstance(epochs_per_experience, bool) or not isinstance(epochs_per_experience, int) or epochs_per_experience < 1:
            raise ValueError(f"ContinualModule: epochs_per_experience expected an integer >= 1, found {epochs_per_experience!r}")
        built = build_regularizers(regularizers)  # validated before the (slow) model is built
        super().__init__(**kwargs)
        #: name -> regulariser (plain objects: their tensors and teacher are not part of the module)
        self.regularizers = built

    def epochs_per_experience(self) -> int:
        return int(self.hparams.epochs_per_experience)

    def experiences(self) -> List[List[str]]:
        return [[name] for name in (self.stream_specs or self.task_specs)]

    def validate_schedule(self) -> None:
        n = len(self.experiences())
        expected = n * self.epochs_per_experience()
        if self.trainer.max_epochs != expected:
            raise ValueError(
                f"ContinualModule: trainer.max_epochs is {self.trainer.max_epochs}, but the stream has {n} experience(s) x "
                f"model.epochs_per_experience={self.epochs_per_experience()}; set trainer.max_epochs: {expected}"
            )
        if n > 1 and self.trainer.reload_dataloaders_every_n_epochs != 1:
            raise ValueError(
                "ContinualModule: trainer.reload_dataloaders_every_n_epochs must be 1 so the stream can switch domains "
                f"between epochs; found {self.trainer.reload_dataloaders_every_n_epochs}"
            )

    # ------------------------------------------------------------------ regularisation
    def regularization_loss(self, batch: Mapping[str, Mapping[str, Tensor]]) -> Optional[Tensor]:
        total = None
        for name, regularizer in self.regularizers.items():
            penalty = regularizer.penalty(self, batch)
            if penalty is None:
                continue
            self.log(f"train/{name}", penalty, batch_size=1, on_step=False, on_epoch=True)
            total = penalty if total is None else total + penalty
        return total

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        epoch = self.current_epoch
        if self.regularizers and self.is_last_epoch_of_experience(epoch):
            experience = self.experience_of_epoch(epoch)
            tasks = list(self.experiences()[experience])
            for regularizer in self.regularizers.values():
                with trainer_precision(self.trainer):  # EWC's Fisher passes under the run's precision
                    regularizer.on_experience_end(self, self.trainer, experience, tasks)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.regularizers:
            checkpoint[REGULARIZERS_KEY] = {name: r.state_dict() for name, r in self.regularizers.items()}

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)  # heads and adapters first: the teacher mirrors them
        stored = checkpoint.get(REGULARIZERS_KEY) or {}
        for name, state in stored.items():
            regularizer = self.regularizers.get(name)
            if regularizer is None:
                known = f"{name} is one of {sorted(REGULARIZERS)}" if name in REGULARIZERS else f"{name} is unknown"
                log.warning("checkpoint holds state of regulariser %r, which this run does not use (%s); it is ignored", name, known)
                continue
            regularizer.load_state_dict(state, self)
        missing = [name for name in self.regularizers if name not in stored]
        if missing and self.task_specs:
            log.warning("checkpoint holds no state of regulariser(s) %s; they start empty (nothing to protect yet)", missing)
