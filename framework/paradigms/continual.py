"""Continual learning: domains arrive one after another; the model grows a head per domain."""
from __future__ import annotations

from typing import List

from framework.paradigms.base import MedCLModule
from framework.paradigms.joint import SharedModelMixin

__all__ = ["ContinualModule"]


class ContinualModule(SharedModelMixin, MedCLModule):
    """Continual learning (paradigm c; with :class:`~framework.callbacks.ReplayCallback`, paradigm d).

    One ``fit`` covers the whole stream: epoch ``e`` belongs to experience
    ``e // epochs_per_experience``, so ``trainer.max_epochs`` must equal
    ``len(stream) * epochs_per_experience`` and the trainer must reload dataloaders every epoch.
    Resuming from any checkpoint then continues the stream where it stopped.

    Args:
        epochs_per_experience: training epochs spent on each domain.
        **kwargs: see :class:`~framework.paradigms.base.MedCLModule`.

    Raises:
        ValueError: if ``epochs_per_experience`` < 1, or (at ``fit``) the trainer settings do not
            match the stream.
    """

    def __init__(self, epochs_per_experience: int = 1, **kwargs) -> None:
        if isinstance(epochs_per_experience, bool) or not isinstance(epochs_per_experience, int) or epochs_per_experience < 1:
            raise ValueError(f"ContinualModule: epochs_per_experience expected an integer >= 1, found {epochs_per_experience!r}")
        super().__init__(**kwargs)

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
