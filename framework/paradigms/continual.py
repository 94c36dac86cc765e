"""Continual learning: domains arrive one after another; the model grows a head per domain."""
from __future__ import annotations

import logging
import warnings
from typing import Any, Dict, List, Mapping, Optional

from framework.paradigms.base import MedCLModule
from framework.paradigms.joint import SharedModelMixin
from framework.strategies.ewc import EWC
from framework.strategies.lwf import LwF
from framework.strategies.regularizer import CHECKPOINT_KEY as REGULARIZERS_KEY
from framework.strategies.regularizer import Regularizer

__all__ = ["ContinualModule", "REGULARIZERS", "build_regularizers"]

log = logging.getLogger(__name__)

#: names of the deprecated ``model.regularizers`` option -> strategy class
REGULARIZERS = {"ewc": EWC, "lwf": LwF}


def build_regularizers(config: Optional[Mapping[str, Any]], where: str = "regularizers") -> Dict[str, Regularizer]:
    """Validate ``{name: {option: value}}`` (the deprecated ``model.regularizers``) and build the strategies, in order.

    Raises:
        ValueError: on an unknown regulariser or option (listing the known ones) or an invalid value
            (naming e.g. ``regularizers.ewc.weight``).
    """
    if config is None:
        return {}
    if not isinstance(config, Mapping):
        raise ValueError(f"{where} expected a mapping of regulariser name -> options (known: {sorted(REGULARIZERS)}), found {config!r}")
    out: Dict[str, Regularizer] = {}
    for name, options in config.items():
        if name not in REGULARIZERS:
            raise ValueError(f"{where}: unknown regulariser {name!r}; known: {sorted(REGULARIZERS)}")
        options = {} if options is None else options
        if not isinstance(options, Mapping):
            raise ValueError(f"{where}.{name} expected a mapping of options {sorted(REGULARIZERS[name].OPTIONS)}, found {options!r}")
        cls = REGULARIZERS[name]
        for key in options:
            if key not in cls.OPTIONS:
                raise ValueError(f"{where}.{name}.{key}: unknown option; {name} takes {sorted(cls.OPTIONS)}")
        out[name] = cls(**dict(options), where=f"{where}.{name}")
    return out


class ContinualModule(SharedModelMixin, MedCLModule):
    """Continual learning (paradigm c; with strategies such as :class:`~framework.strategies.Replay`, paradigm d).

    One ``fit`` covers the whole stream: epoch ``e`` belongs to experience
    ``e // epochs_per_experience``, so ``trainer.max_epochs`` must equal
    ``len(stream) * epochs_per_experience`` and the trainer must reload dataloaders every epoch.
    Resuming from any checkpoint then continues the stream where it stopped.

    Args:
        epochs_per_experience: training epochs spent on each domain.
        regularizers: deprecated: list the strategies under ``trainer.callbacks`` instead
            (``class_path: framework.strategies.EWC``, ``framework.strategies.LwF``).  Still accepted:
            ``{"ewc": {"weight": 100.0, "fisher_batches": 20}, "lwf": {"weight": 1.0, "temperature": 2.0}}``
            builds those strategies as the module's own (their state in the checkpoint under
            ``medcl_regularizers``, so older checkpoints resume).
        **kwargs: see :class:`~framework.paradigms.base.MedCLModule`.

    Raises:
        ValueError: if ``epochs_per_experience`` < 1, a regulariser or one of its options is unknown
            or invalid, or (at ``fit``) the trainer settings do not match the stream.
    """

    def __init__(self, epochs_per_experience: int = 1, regularizers: Optional[Dict[str, Dict[str, Any]]] = None, **kwargs) -> None:
        if isinstance(epochs_per_experience, bool) or not isinstance(epochs_per_experience, int) or epochs_per_experience < 1:
            raise ValueError(f"ContinualModule: epochs_per_experience expected an integer >= 1, found {epochs_per_experience!r}")
        built = build_regularizers(regularizers)  # validated before the (slow) model is built
        if built:
            warnings.warn(
                "ContinualModule: model.init_args.regularizers is deprecated; list the strategies under trainer.callbacks, e.g. "
                "{class_path: framework.strategies.EWC, init_args: {weight: 100.0}} (docs/strategies.md)",
                FutureWarning, stacklevel=2,
            )
        super().__init__(**kwargs)
        #: name -> regulariser built from the deprecated option (strategies of the module's own)
        self.regularizers = built
        self.own_strategies.extend(built.values())

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
