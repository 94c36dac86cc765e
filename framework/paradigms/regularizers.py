"""Regularisation strategies for continual learning: EWC and LwF on :class:`ContinualModule`.

* **EWC** — Elastic Weight Consolidation (Kirkpatrick et al., 2017, "Overcoming catastrophic
  forgetting in neural networks", PNAS): a quadratic penalty keeps parameters that mattered for
  earlier experiences (large diagonal Fisher information) near the values they had then.
* **LwF** — Learning without Forgetting (Li & Hoiem, 2017, "Learning without Forgetting", TPAMI):
  the new experience's images are also passed through every old task head of a frozen copy of the
  model taken at the end of the previous experience, and the live model's old-head outputs are
  distilled towards them (Hinton et al. 2015 knowledge distillation).

Avalanche implements both (``EWCPlugin``, ``LwFPlugin``), but as plugins of its own
strategy/template training loop: they cannot be attached to a Lightning module, and MedCL's
multi-kind heads (segmentation, survival) and per-modality routing need their own distillation.
So MedCL writes its own, following the same formulas.

Regularisers are plain data in the config (``model.init_args.regularizers``), may be combined with
each other and with :class:`~framework.callbacks.ReplayCallback`, and their state (Fisher,
anchors, the LwF teacher) travels in the Lightning checkpoint under :data:`CHECKPOINT_KEY`::

    regularizers:
      ewc: {weight: 100.0, fisher_batches: 20}
      lwf: {weight: 1.0, temperature: 2.0}

The experience-end state is computed in ``ContinualModule.on_train_epoch_end``; a
``ModelCheckpoint`` that saves at train-epoch end (``save_on_train_epoch_end: true``, as the
shipped configs do) runs after it and stores it.
"""
from __future__ import annotations

import copy
import logging
import math
from abc import ABC, abstractmethod
from typing import Any, Dict, List, Mapping, Optional, Sequence

import torch
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor

from framework.core.data_protocol import domain_for
from framework.model import MedCLModel
from framework.core.specs import TaskSpec

__all__ = ["Regularizer", "EWC", "LwF", "REGULARIZERS", "CHECKPOINT_KEY", "build_regularizers", "distillable"]

log = logging.getLogger(__name__)

#: key of the regularisers' state in Lightning checkpoints
CHECKPOINT_KEY = "medcl_regularizers"


def _shared_model(module) -> MedCLModel:
    models = module.all_models()
    if len(models) != 1:
        raise ValueError(
            f"regularizers need one model shared by all tasks (ContinualModule); {type(module).__name__} has {len(models)}"
        )
    return models[0]


def _number(where: str, value: Any, minimum: float, strict: bool) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < minimum or (strict and value == minimum):
        expected = f"a finite number {'>' if strict else '>='} {minimum:g}"
        raise ValueError(f"{where} expected {expected}, found {value!r}")
    return float(value)


class Regularizer(ABC):
    """A penalty on the training loss with state gathered at experience ends.

    Subclasses list their options (name -> default) in :attr:`OPTIONS` and validate them in
    ``__init__``; ``where`` (e.g. ``"regularizers.ewc"``) prefixes error messages.
    """

    #: name in :data:`REGULARIZERS`, the config and the logged metric ``train/<name>``
    name: str = ""
    #: option -> default
    OPTIONS: Dict[str, Any] = {}

    def __init__(self, where: str) -> None:
        self.where = where

    @abstractmethod
    def penalty(self, module, batch: Mapping[str, Mapping[str, Tensor]]) -> Optional[Tensor]:
        """The scalar penalty for this training batch, ``None`` while there is nothing to protect."""

    @abstractmethod
    def on_experience_end(self, module, trainer, experience: int, tasks: Sequence[str]) -> None:
        """Gather what protects the experience just trained (called after its last epoch)."""

    @abstractmethod
    def state_dict(self) -> Dict[str, Any]:
        """Plain dicts of tensors, strings and numbers (loadable with ``torch.load(weights_only=True)``)."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, Any], module) -> None:
        """Restore :meth:`state_dict` output into a regulariser of ``module`` (device moves are lazy)."""


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

    name = "ewc"
    OPTIONS = {"weight": 1.0, "fisher_batches": 20}

    def __init__(self, weight: float = 1.0, fisher_batches: int = 20, where: str = "regularizers.ewc") -> None:
        super().__init__(where)
        self.weight = _number(f"{where}.weight", weight, 0.0, strict=False)
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
        model = _shared_model(module)
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

    def on_experience_end(self, module, trainer, experience: int, tasks: Sequence[str]) -> None:
        new = self.estimate_fisher(module, trainer, list(tasks))
        if not new:
            return
        for name, f in new.items():
            old = self.fisher.get(name)
            self.fisher[name] = f if old is None else old.to(f.device) + f
        params = dict(_shared_model(module).named_parameters())
        self.anchor = {n: params[n].detach().clone() for n in self.fisher if n in params}
        self.experiences.append(int(experience))
        log.info("EWC: Fisher of experience %d (%s) over %d parameter tensors", experience, "+".join(tasks), len(new))

    # ------------------------------------------------------------------ penalty
    def penalty(self, module, batch) -> Optional[Tensor]:
        if not self.anchor:
            return None
        total = None
        for name, p in _shared_model(module).named_parameters():
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

    def load_state_dict(self, state: Mapping[str, Any], module) -> None:
        fisher, anchor = dict(state.get("fisher", {})), dict(state.get("anchor", {}))
        if set(anchor) - set(fisher):
            raise ValueError(f"checkpoint field '{CHECKPOINT_KEY}.{self.name}': anchored parameters without a Fisher entry: {sorted(set(anchor) - set(fisher))[:5]}")
        self.fisher, self.anchor = fisher, anchor
        self.experiences = [int(e) for e in state.get("experiences", [])]


def distillable(old: TaskSpec, current: TaskSpec) -> bool:
    """Whether ``old``'s head can run on ``current``'s images: same ``spatial_dims`` (a 2D head
    cannot read volumes) and same ``in_channels``, 1 and 3 counting as one (the backbone expands
    grayscale to RGB; any other count needs that modality's own patch embedding)."""
    group = lambda c: 3 if c in (1, 3) else c  # noqa: E731
    return old.spatial_dims == current.spatial_dims and group(old.in_channels) == group(current.in_channels)


class LwF(Regularizer):
    """Learning without Forgetting (Li & Hoiem 2017).

    At the end of every experience a frozen copy of the shared model (eval mode, no gradients) is
    kept as the teacher; it replaces the previous one, so it holds every head learned so far.
    During later experiences, the images of the tasks being trained (``tasks_for_epoch``; replayed
    sub-batches are not used) go through every old task head the teacher has, in the teacher and
    in the live model; each pair's :meth:`~framework.heads.TaskHead.distillation_loss` (softened
    with ``temperature``) is averaged.  ``model(images, old_task)`` routes the image tower through
    the old task's modality adapters, in teacher and student alike.  Old heads that cannot read the
    images are skipped (see :func:`distillable`).  Penalty: ``weight * mean`` of those losses.

    Args:
        weight: the penalty strength (>= 0).
        temperature: distillation temperature T (> 0; Li & Hoiem use 2).
    """

    name = "lwf"
    OPTIONS = {"weight": 1.0, "temperature": 2.0}

    def __init__(self, weight: float = 1.0, temperature: float = 2.0, where: str = "regularizers.lwf") -> None:
        super().__init__(where)
        self.weight = _number(f"{where}.weight", weight, 0.0, strict=False)
        self.temperature = _number(f"{where}.temperature", temperature, 0.0, strict=True)
        self.teacher: Optional[MedCLModel] = None

    @staticmethod
    def _freeze(model: MedCLModel) -> MedCLModel:
        model.eval()
        model.requires_grad_(False)
        return model

    def on_experience_end(self, module, trainer, experience: int, tasks: Sequence[str]) -> None:
        teacher = copy.deepcopy(_shared_model(module))
        teacher.zero_grad(set_to_none=True)
        self.teacher = self._freeze(teacher)
        log.info("LwF: teacher of experience %d kept, with heads %s", experience, teacher.tasks)

    def penalty(self, module, batch) -> Optional[Tensor]:
        if self.teacher is None:
            return None
        model = _shared_model(module)
        current = [t for t in module.tasks_for_epoch(module.current_epoch) if t in batch]
        old = [t for t in self.teacher.tasks if t not in current and t in model.specs]
        terms = []
        for task in current:
            images = batch[task]["image"]
            spec = model.specs[task]
            device = next(self.teacher.parameters()).device
            if device != images.device:
                self.teacher.to(images.device)
            for name in old:
                if not distillable(self.teacher.specs[name], spec):
                    continue
                with torch.no_grad():
                    target = self.teacher(images, name)
                terms.append(model.head(name).distillation_loss(model(images, name), target, self.temperature))
        if not terms:
            return None
        return self.weight * torch.stack(terms).mean()

    def state_dict(self) -> Dict[str, Any]:
        if self.teacher is None:
            return {"teacher": None}
        teacher = self.teacher
        return {
            "teacher": {
                "tasks": [teacher.specs[name].to_dict() for name in teacher.tasks],
                "adapters": {name: spec.to_dict() for name, spec in teacher.adapter_of_task.items()},
                "state_dict": {k: v.detach().cpu() for k, v in teacher.state_dict().items()},
            }
        }

    def load_state_dict(self, state: Mapping[str, Any], module) -> None:
        """Rebuild the teacher as a fresh model with the stored tasks and adapters, then load its weights strictly.

        Raises:
            ValueError: if the stored weights do not fit the rebuilt teacher.
        """
        stored = state.get("teacher")
        if stored is None:
            self.teacher = None
            return
        key = f"{CHECKPOINT_KEY}.{self.name}.teacher"
        with module.rebuilding():  # the stored weights follow
            teacher = module.new_model()
            for _, spec, adapter in module._stored_tasks(stored, "checkpoint", key=key):  # the same reader as the model's own tasks
                teacher.add_task(spec, adapter)
        try:
            teacher.load_state_dict(stored["state_dict"], strict=True)
        except RuntimeError as err:
            raise ValueError(f"checkpoint field '{key}.state_dict': the weights do not fit the rebuilt teacher: {str(err).splitlines()[0]}") from None
        self.teacher = self._freeze(teacher)


#: name in the config -> class
REGULARIZERS = {"ewc": EWC, "lwf": LwF}


def build_regularizers(config: Optional[Mapping[str, Any]], where: str = "regularizers") -> Dict[str, Regularizer]:
    """Validate ``{name: {option: value}}`` and build the regularisers, in the given order.

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
