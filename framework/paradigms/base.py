"""Shared LightningModule for every training paradigm.

All paradigms consume the same batch: a dict keyed by task name, each value a dict with
``image`` and ``target`` tensors.  ``training_step`` sums per-task losses; the only thing a
paradigm decides is *which tasks are trained at which epoch* (:meth:`experiences`) and *which
model serves a task* (:meth:`model_for`).  Continual-learning methods are strategies
(:mod:`framework.strategies`), called through named hooks around the step and the experiences.

The module is assembled from one mixin per responsibility: :mod:`~framework.paradigms.growth`
(heads and the optimizer), :mod:`~framework.paradigms.schedule` (experiences),
:mod:`~framework.paradigms.preflight` (setup and its checks), :mod:`~framework.paradigms.steps`
(the steps) and :mod:`~framework.paradigms.checkpoint_format` (the checkpoint format).
"""
from __future__ import annotations

import contextlib
import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any, Dict, Iterator, List, Literal, Mapping, Optional, Tuple, Union

import pytorch_lightning as pl
from pytorch_lightning.cli import LRSchedulerCallable, OptimizerCallable
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from framework.adapters import AdapterSpec, check_lora_options
from framework.backbone.architecture import resolve_architecture
from framework.backbone.custom import check_backbone_value
from framework.core.specs import TaskSpec
from framework.model import MedCLModel
from framework.paradigms.checkpoint_format import (
    CHECKPOINT_FORMAT, CHECKPOINT_KEY, MODEL_DEFINING_HPARAMS, SHARED_MODEL_PARADIGMS, CheckpointFormatMixin, hparam_differences,
)
from framework.paradigms.growth import OPTIMIZER_ON_NEW_TASK, GrowthMixin
from framework.paradigms.preflight import PreflightMixin
from framework.paradigms.schedule import ScheduleMixin
from framework.paradigms.steps import StepsMixin
from framework.strategies.base import Strategy
from framework.routing import check_router_config
from framework.routing.fitting import RouterFitting
from framework.strategies.freezing import Freezing
from framework.strategies.runner import StrategyRunner

__all__ = [
    "MedCLModule", "CHECKPOINT_KEY", "CHECKPOINT_FORMAT", "OPTIMIZER_ON_NEW_TASK", "MODEL_DEFINING_HPARAMS", "SHARED_MODEL_PARADIGMS",
    "hparam_differences",
]

log = logging.getLogger(__name__)

TASK_LOSS_WEIGHTINGS = ("equal", "samples")


class MedCLModule(CheckpointFormatMixin, GrowthMixin, ScheduleMixin, PreflightMixin, StepsMixin, pl.LightningModule):
    """Base of :class:`SpecializedModule`, :class:`JointModule` and :class:`ContinualModule`.

    Args:
        backbone: open_clip architecture name (``medcl-vit-tiny``, ``medcl-resnet18-tiny``, ``ViT-B-16``,
            ``hf-hub:org/repo``, ``local-dir:/path`` ...), or a user's own image tower as
            ``{class_path: pkg.module.Tower, init_args: {...}}`` (protocol: :mod:`framework.backbone.custom`).
        pretrained: ``None``, a local checkpoint file, or an open_clip tag (needs internet); open_clip
            backbones only (a custom tower reads its weights in its own ``load_pretrained``).
        image_size: override the architecture's input size (open_clip backbones only).
        freeze_image_tower: keep the image tower frozen (a custom backbone: the whole tower).
        freeze_text_tower: keep the text tower frozen (prompt embeddings are then cached); open_clip backbones only.
        head_args: per-kind head options, e.g. ``{"classification": {"learn_class_embeddings": true}}``.
        lr: learning rate of the default optimizer (AdamW).
        weight_decay: weight decay of the default optimizer.
        optimizer_on_new_task: what happens to the optimizer when a head is added during ``fit``:
            ``"extend"`` adds a parameter group for the new head and keeps the Adam state of
            everything else; ``"reset"`` rebuilds the optimizer and drops all Adam state.
        init_from: a MedCL checkpoint to grow: its backbone, adapters and heads are rebuilt and
            loaded strictly (in :meth:`setup`), then this run's data adds its tasks.  Unlike
            ``--ckpt_path`` (resume the same run), this starts a new run from a trained model.  A
            checkpoint of the grown run holds everything, so resuming or reloading it never reads
            the ``init_from`` file again.
        freeze: freezing policy, one of :data:`~framework.strategies.freezing_policy.FREEZE_POLICIES`.
        lora: LoRA options (``r``, ``alpha``, ``dropout``, ``target_modules``) for every modality
            that is new to the model; ``null`` for none.
        task_loss_weighting: how the per-task mean losses of one batch are combined: ``"equal"``
            sums them (every task present weighs the same, however few samples it brought, e.g. a
            few replayed exemplars); ``"samples"`` weighs each by its share of the batch's samples
            (one mean over all samples, what a single-loss loop such as Avalanche's computes).
        domain_batchnorm: every task normalises with its own copy of the image tower's BatchNorm
            layers (DSBN: statistics and affine parameters, routed by the task like the adapters,
            stored in checkpoints); for BatchNorm towers trained on several datasets.
        optimizer: any optimizer as ``{class_path: torch.optim.SGD, init_args: {lr: 0.01}}`` (LightningCLI's
            ``OptimizerCallable``), built over MedCL's named parameter groups; default AdamW(lr, weight_decay).
        lr_scheduler: a scheduler as ``{class_path: torch.optim.lr_scheduler.CosineAnnealingLR, init_args: {T_max: 10}}``
            (``LRSchedulerCallable``), stepped every epoch; with heads added during ``fit`` it needs
            ``optimizer_on_new_task: reset`` (then it restarts with every new task).
        router: a task router, ``{kind: prototypes}`` or ``{kind: learned}`` with that kind's options
            (:mod:`framework.routing`): the model learns to name the image source of an image (and so
            its tasks), or "unknown"; ``null`` for none.  Needs a paradigm with one shared model.

    Raises:
        ValueError: on invalid hyper-parameters, or an ``init_from`` file that is not a MedCL
            checkpoint or whose model differs from this configuration.
        FileNotFoundError: if ``init_from`` does not exist.
    """

    def __init__(
        self,
        backbone: Union[str, Dict[str, Any]] = "medcl-vit-tiny",
        pretrained: Optional[str] = None,
        image_size: Optional[int] = None,
        freeze_image_tower: bool = False,
        freeze_text_tower: bool = True,
        head_args: Optional[Dict[str, Dict[str, Any]]] = None,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        optimizer_on_new_task: Literal["extend", "reset"] = "extend",
        init_from: Optional[str] = None,
        freeze: str = "none",
        lora: Optional[Dict[str, Any]] = None,
        task_loss_weighting: Literal["equal", "samples"] = "equal",
        domain_batchnorm: bool = False,
        optimizer: Optional[OptimizerCallable] = None,
        lr_scheduler: Optional[LRSchedulerCallable] = None,
        router: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__()
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: lr expected > 0, found {lr}")
        if weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: weight_decay expected >= 0, found {weight_decay}")
        if optimizer_on_new_task not in OPTIMIZER_ON_NEW_TASK:
            raise ValueError(
                f"{type(self).__name__}: optimizer_on_new_task expected one of {list(OPTIMIZER_ON_NEW_TASK)}, found {optimizer_on_new_task!r}"
            )
        if task_loss_weighting not in TASK_LOSS_WEIGHTINGS:
            raise ValueError(
                f"{type(self).__name__}: task_loss_weighting expected one of {list(TASK_LOSS_WEIGHTINGS)}, found {task_loss_weighting!r}"
            )
        if optimizer is not None and (lr != 1e-3 or weight_decay != 0.0):
            raise ValueError(
                f"{type(self).__name__}: lr={lr} / weight_decay={weight_decay} set the default AdamW, but an optimizer is configured; "
                f"give them in the optimizer's init_args instead"
            )
        # the callables themselves (hparams hold their config: LightningCLI records what the config gave)
        self.optimizer_factory, self.scheduler_factory = optimizer, lr_scheduler
        #: the freezing policy, a strategy of the module's own (framework/strategies/freezing.py)
        self.freezing = Freezing(freeze)
        # a custom backbone is stored as {class_path, init_args} (init_args always present)
        backbone = check_backbone_value(backbone, type(self).__name__)
        self.save_hyperparameters()
        for key in ("optimizer", "lr_scheduler"):  # a callable given from Python: its description, so checkpoints stay weights-only loadable
            value = self.hparams.get(key)
            if value is not None and not isinstance(value, Mapping):
                self.hparams[key] = {"python_callable": repr(value)}
        if isinstance(backbone, dict):  # a custom tower (framework/backbone/custom.py)
            for name, value in (("pretrained", pretrained), ("image_size", image_size)):
                if value is not None:
                    raise ValueError(
                        f"{type(self).__name__}: {name}={value!r} applies to open_clip backbones; the custom backbone "
                        f"{backbone['class_path']!r} takes it in its own init_args: set {name}: null"
                    )
            self.backbone_config = dict(tower=backbone, freeze_image_tower=freeze_image_tower, load_weights=False)
        else:
            self.backbone_config = dict(
                model_name=backbone,
                pretrained=pretrained,
                image_size=image_size,
                freeze_image_tower=freeze_image_tower,
                freeze_text_tower=freeze_text_tower,
                # resolved once (a checkpoint's stored architecture first); weights load in setup, see load_pretrained
                architecture=resolve_architecture(backbone, pretrained),
                load_weights=False,
            )
        #: the weights are settled: pretrained ones loaded, or a checkpoint's loaded (nothing may overwrite them)
        self.weights_ready = False
        #: a checkpoint's weights are about to be loaded (see :meth:`expect_checkpoint_weights`)
        self.checkpoint_pending = False
        self._rebuilding = 0
        self.register_load_state_dict_post_hook(lambda module, _keys: module._weights_loaded())
        self.head_args = dict(head_args or {})
        self.lora = check_lora_options(lora, f"{type(self).__name__}")
        self.router_config = check_router_config(router, type(self).__name__)
        if init_from is not None and (not isinstance(init_from, (str, Path)) or not str(init_from)):
            raise ValueError(f"{type(self).__name__}: init_from expected null or a checkpoint path, found {init_from!r}")
        #: specs of the tasks the model has grown heads for, in order
        self.task_specs: Dict[str, TaskSpec] = {}
        #: specs the data offers for training, in stream order (set in :meth:`setup`)
        self.stream_specs: Dict[str, TaskSpec] = {}
        #: tasks loaded with ``init_from``
        self.initial_tasks: List[str] = []
        #: experience -> trainable parameter counts (see :class:`FreezingPolicy`)
        self.trainable_counts: Dict[int, Dict[str, int]] = {}
        self.metrics = nn.ModuleDict()
        #: strategies this module builds itself (the freezing policy; a paradigm may add more), called
        #: before the trainer's in before_* hooks and after them in after_experience
        self.own_strategies: List[Strategy] = [self.freezing] + ([RouterFitting()] if self.router_config is not None else [])
        #: parameters strategies learn (e.g. a prompt pool), registered at setup (framework/strategies/runner.py)
        self.strategy_modules = nn.ModuleDict()
        self.strategy_runner = StrategyRunner(self)
        self._experience_started: Optional[int] = None
        with self.rebuilding():  # the weights come later: pretrained ones in setup, or a checkpoint's
            self.build_models()

    # ------------------------------------------------------------------ paradigm interface
    def new_model(self) -> MedCLModel:
        """A fresh backbone with no heads, from this module's hyper-parameters, with its pretrained
        weights (none while :meth:`rebuilding` a stored model, whose weights come from a checkpoint)."""
        model = MedCLModel(
            backbone=self.backbone_config, head_args=self.head_args, lora=self.lora, domain_batchnorm=self.hparams.domain_batchnorm,
            router=self.router_config,
        )
        if not self._rebuilding and not self.checkpoint_pending:
            model.backbone.load_pretrained()
        return model

    @contextlib.contextmanager
    def rebuilding(self) -> Iterator[None]:
        """Models built in this block get no pretrained weights: a checkpoint's weights follow."""
        self._rebuilding += 1
        try:
            yield
        finally:
            self._rebuilding -= 1

    def expect_checkpoint_weights(self) -> None:
        """Announce that a checkpoint's weights will be loaded (``--ckpt_path``): until then no pretrained
        file is read, so a checkpoint tests, predicts and resumes without it.

        Lightning sets ``trainer.ckpt_path`` only after :meth:`setup`, so ``medcl`` calls this before
        running a command with ``--ckpt_path``; from Python, call it before ``trainer.test(model, ckpt_path=...)``
        (without it the pretrained file is read first and then overwritten by the checkpoint).
        """
        self.checkpoint_pending = True

    def _weights_loaded(self) -> None:
        self.weights_ready = True
        self.checkpoint_pending = False

    def load_pretrained(self) -> None:
        """Load the pretrained weights into every model (once; never over weights a checkpoint loaded).

        Called in :meth:`setup` of a run that starts neither from ``--ckpt_path`` nor from ``init_from``.
        """
        if self.weights_ready:
            return
        for model in self.all_models():
            path = model.backbone.load_pretrained()
            if path is not None:
                rank_zero_info(f"{type(self).__name__}: backbone {self.hparams.backbone!r} starts from the pretrained weights {path}")
        self.weights_ready = True

    @property
    def architecture(self):
        """The backbone's :class:`~framework.backbone.architecture.Architecture` (stored in checkpoints);
        ``None`` for a custom tower (its class_path and init_args are in the hyper-parameters)."""
        return self.backbone_config.get("architecture")

    @abstractmethod
    def build_models(self) -> None:
        """Create the paradigm's (empty) model container(s)."""

    @abstractmethod
    def all_models(self) -> List[MedCLModel]:
        """Every model of the paradigm (for freezing)."""

    @abstractmethod
    def model_for(self, task: str) -> MedCLModel:
        """The model that serves ``task``."""

    @abstractmethod
    def _grow(self, spec: TaskSpec, adapter: Union[str, AdapterSpec, None]) -> None:
        """Add a head (and, for specialised learning, a model) for ``spec``; ``adapter`` as in
        :meth:`MedCLModel.add_task`."""

    @abstractmethod
    def optimizer_groups(self) -> List[Tuple[str, List[nn.Parameter]]]:
        """Named parameter groups, in a deterministic order that depends only on the grown tasks."""

    def train(self, mode: bool = True):
        """``nn.Module.train``, keeping modules frozen by the freezing policy in eval mode."""
        super().train(mode)
        if mode and hasattr(self, "freezing"):
            self.freezing.set_eval()
        return self
