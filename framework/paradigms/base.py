"""Shared LightningModule for every training paradigm.

All paradigms consume the same batch: a dict keyed by task name, each value a dict with
``image`` and ``target`` tensors.  ``training_step`` sums per-task losses; the only thing a
paradigm decides is *which tasks are trained at which epoch* (:meth:`experiences`) and *which
model serves a task* (:meth:`model_for`).

Experience-boundary hooks (Avalanche-style vocabulary): at the first epoch of an experience the
module calls ``on_experience_start(trainer, module, experience, tasks)`` and after its last epoch
``on_experience_end(...)`` on itself and on every callback that defines them.
"""
from __future__ import annotations

import contextlib
import logging
from abc import abstractmethod
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Literal, Mapping, Optional, Sequence, Tuple, Union

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info
import torch
from torch import Tensor, nn

from framework.core.data_protocol import single_sample_last_batches
from framework.adapters import AdapterSpec, check_lora_options
from framework.backbone.architecture import forget_checkpoint_architectures, register_checkpoint_architecture, resolve_architecture
from framework.backbone.custom import check_backbone_value, comparable_backbone
from framework.core.checkpoints import load_checkpoint
from framework.core.divergence import check_loss, check_module, check_state_dict
from framework.heads import TaskHead
from framework.metrics.evaluation import evaluate_head
from framework.model import MedCLModel
from framework.paradigms.freezing import FREEZE_POLICIES, FreezingPolicy
from framework.precision import trainer_precision, warn_on_slow_precision
from framework.core.seeding import seed_epoch
from framework.core.specs import TaskSpec

__all__ = ["MedCLModule", "CHECKPOINT_KEY", "OPTIMIZER_ON_NEW_TASK", "MODEL_DEFINING_HPARAMS", "hparam_differences"]

log = logging.getLogger(__name__)

#: key under which task specs are stored in Lightning checkpoints
CHECKPOINT_KEY = "medcl"
CHECKPOINT_FORMAT = 1
OPTIMIZER_ON_NEW_TASK = ("extend", "reset")
TASK_LOSS_WEIGHTINGS = ("equal", "samples")
#: hyper-parameters that decide the shape of the stored weights, with their defaults
MODEL_DEFINING_HPARAMS = {"backbone": "medcl-vit-tiny", "image_size": None, "head_args": None, "domain_batchnorm": False}
#: paradigms that share one model (their checkpoints load into each other with init_from)
SHARED_MODEL_PARADIGMS = ("ContinualModule", "JointModule")


def hparam_differences(
    stored: Mapping[str, Any], wanted: Mapping[str, Any], stored_kinds: Optional[Iterable[str]] = None, native_size: Optional[Any] = None
) -> List[str]:
    """``"field: checkpoint X, config Y"`` for every model-defining hyper-parameter that differs.

    Args:
        stored: the checkpoint's hyper-parameters.
        wanted: this configuration's.
        stored_kinds: growing (``init_from``): the task kinds of the checkpoint's heads; ``head_args``
            then only has to agree for those kinds (a new kind's head options may be added).
        native_size: the architecture's own input size, named where ``image_size`` is ``None``.
    """
    out = []
    for key, default in MODEL_DEFINING_HPARAMS.items():
        a, b = stored.get(key, default), wanted.get(key, default)
        if key == "backbone":  # a custom tower's init_args: absent = empty
            a, b = comparable_backbone(a), comparable_backbone(b)
        if key == "head_args" and stored_kinds is not None:
            a, b = ({k: v for k, v in dict(x or {}).items() if k in set(stored_kinds)} for x in (a, b))
        if (a or None) != (b or None):
            if key == "image_size":
                shown = [repr(v) if v is not None or native_size is None else f"None (the architecture's {native_size} px)" for v in (a, b)]
                out.append(
                    f"image_size: checkpoint {shown[0]}, config {shown[1]} (the tower's native size; a task's own input size is its "
                    f"data module's image_size, which needs no change of the model)"
                )
                continue
            out.append(f"{key}: checkpoint {a!r}, config {b!r}")
    return out


class MedCLModule(pl.LightningModule):
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
        lr: AdamW learning rate.
        weight_decay: AdamW weight decay.
        optimizer_on_new_task: what happens to the optimizer when a head is added during ``fit``:
            ``"extend"`` adds a parameter group for the new head and keeps the Adam state of
            everything else; ``"reset"`` rebuilds the optimizer and drops all Adam state.
        init_from: a MedCL checkpoint to grow: its backbone, adapters and heads are rebuilt and
            loaded strictly (in :meth:`setup`), then this run's data adds its tasks.  Unlike
            ``--ckpt_path`` (resume the same run), this starts a new run from a trained model.  A
            checkpoint of the grown run holds everything, so resuming or reloading it never reads
            the ``init_from`` file again.
        freeze: freezing policy, one of :data:`~framework.paradigms.freezing.FREEZE_POLICIES`.
        lora: LoRA options (``r``, ``alpha``, ``dropout``, ``target_modules``) for every modality
            that is new to the model; ``null`` for none.
        task_loss_weighting: how the per-task mean losses of one batch are combined: ``"equal"``
            sums them (every task present weighs the same, however few samples it brought, e.g. a
            few replayed exemplars); ``"samples"`` weighs each by its share of the batch's samples
            (one mean over all samples, what a single-loss loop such as Avalanche's computes).
        domain_batchnorm: every task normalises with its own copy of the image tower's BatchNorm
            layers (DSBN: statistics and affine parameters, routed by the task like the adapters,
            stored in checkpoints); for BatchNorm towers trained on several datasets.

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
        self.freezing = FreezingPolicy(freeze)
        # a custom backbone is stored as {class_path, init_args} (init_args always present)
        backbone = check_backbone_value(backbone, type(self).__name__)
        self.save_hyperparameters()
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
        with self.rebuilding():  # the weights come later: pretrained ones in setup, or a checkpoint's
            self.build_models()

    # ------------------------------------------------------------------ paradigm interface
    def new_model(self) -> MedCLModel:
        """A fresh backbone with no heads, from this module's hyper-parameters, with its pretrained
        weights (none while :meth:`rebuilding` a stored model, whose weights come from a checkpoint)."""
        model = MedCLModel(backbone=self.backbone_config, head_args=self.head_args, lora=self.lora, domain_batchnorm=self.hparams.domain_batchnorm)
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

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, *args, **kwargs):
        """Lightning's ``load_from_checkpoint``, building the backbone from the architecture the
        checkpoint stores (so neither the original model folder nor the pretrained file is needed)."""
        register_checkpoint_architecture(checkpoint_path)
        try:
            return super().load_from_checkpoint(checkpoint_path, *args, **kwargs)
        finally:
            forget_checkpoint_architectures()  # a later fresh model of that name builds from its source again

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

    def experiences(self) -> List[List[str]]:
        """Task names trained in each experience, in order: all tasks at once by default."""
        return [list(self.stream_specs or self.task_specs)]

    def epochs_per_experience(self) -> int:
        return max(int(self.trainer.max_epochs or 1), 1)

    # ------------------------------------------------------------------ growth
    def add_task(self, spec: TaskSpec, adapter: Union[str, AdapterSpec, None] = "auto") -> None:
        """Grow the model by a task; the only way new heads (and adapters) appear.

        During ``fit`` the optimizer is extended or reset according to ``optimizer_on_new_task``.

        Raises:
            ValueError: if the task already exists.
        """
        if spec.name in self.task_specs:
            raise ValueError(f"{type(self).__name__}.add_task: task {spec.name!r} already exists (tasks: {list(self.task_specs)})")
        self._grow(spec, adapter)
        self.task_specs[spec.name] = spec
        head = self.model_for(spec.name).head(spec.name)
        for stage in ("val", "test"):
            self.metrics[f"{stage}_{spec.name}"] = head.make_metrics().clone(prefix=f"{stage}/{spec.name}/")
        self.metrics.to(self.device)
        # Lightning caches the names of metric attributes at the first self.log; new heads bring
        # new metrics, so the cache must be rebuilt.
        self._metric_attributes = None
        self._update_optimizer_for(spec.name)

    def _update_optimizer_for(self, task: str) -> None:
        trainer = self._trainer
        if trainer is None or not trainer.optimizers:
            return
        if self.hparams.optimizer_on_new_task == "reset":
            trainer.strategy.setup_optimizers(trainer)
            log.info("task %r added: optimizer rebuilt (optimizer_on_new_task='reset', Adam state dropped)", task)
            return
        optimizer = trainer.optimizers[0]
        known = {id(p) for group in optimizer.param_groups for p in group["params"]}
        for name, params in self.optimizer_groups():
            new = [p for p in params if id(p) not in known]
            if new:
                optimizer.add_param_group({"params": new, "name": name})
        log.info("task %r added: optimizer extended with its parameters (other Adam state kept)", task)

    def ensure_tasks(self, names: Iterable[str]) -> None:
        for name in names:
            if name not in self.task_specs:
                self.add_task(self.stream_specs[name])

    # ------------------------------------------------------------------ data coupling
    def setup(self, stage: str) -> None:
        restoring = self.checkpoint_pending or (self._trainer is not None and self.trainer.ckpt_path is not None)
        if self.hparams.init_from is not None and not self.task_specs and not restoring:
            self.load_initial_model(self.hparams.init_from)
        elif not restoring:
            self.load_pretrained()
        datamodule = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        specs = getattr(datamodule, "task_specs", None)
        if specs is None:
            if stage == "fit":
                raise ValueError(
                    f"{type(self).__name__}: the datamodule must expose `task_specs` (use a data_modules.DomainStream "
                    f"or a data_modules.DomainDataModule); found {type(datamodule).__name__}"
                )
            return
        names = [s.name for s in specs]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"{type(datamodule).__name__}: task name(s) {dupes} used more than once")
        self.stream_specs = {s.name: s for s in specs}
        evaluation_only = [s for s in getattr(datamodule, "evaluation_specs", specs) if s.name not in self.stream_specs]
        for spec in evaluation_only:
            if spec.name not in self.task_specs:
                raise ValueError(
                    f"{type(datamodule).__name__}: evaluation-only domain {spec.name!r} is not a task of the model "
                    f"(tasks: {list(self.task_specs)}); eval_domains re-test tasks the model has (e.g. from init_from), "
                    f"list a new task under domains to train it"
                )
        for spec in list(self.stream_specs.values()) + evaluation_only:
            mine = self.task_specs.get(spec.name)
            if mine is not None and not mine.same_task(spec):
                raise ValueError(f"task {spec.name!r}: the model's spec {mine.to_dict()} differs from the data's {spec.to_dict()}")
        if stage == "fit":
            warn_on_slow_precision(self.trainer)
            self._refuse_single_sample_batches(datamodule)
            self.validate_schedule()
            self.ensure_tasks(self.experiences()[0])
            self._prepare_ddp()

    def _prepare_ddp(self) -> None:
        """Under DDP, grow every stream task's head now and let DDP find unused parameters.

        DDP registers the parameters it synchronises once, when it wraps the module (after this
        hook), so a head grown later would train separately on each rank.  Heads of later
        experiences stay frozen until their experience (:meth:`future_tasks`).  A MedCL training
        step leaves parameters unused by design (heads of tasks not in the batch, adapters of other
        modalities), so DDP must look for them.
        """
        from pytorch_lightning.strategies import DDPStrategy

        strategy = self.trainer.strategy
        if not isinstance(strategy, DDPStrategy) or self.trainer.world_size < 2:
            return
        for tasks in self.experiences():
            self.ensure_tasks(tasks)
        if not strategy._ddp_kwargs.get("find_unused_parameters"):
            # Lightning exposes no public setter once the strategy exists; the kwargs are read when DDP wraps the module
            strategy._ddp_kwargs["find_unused_parameters"] = True
            rank_zero_info("DDP: find_unused_parameters=True (heads of tasks not in a batch get no gradient)")

    def future_tasks(self, experience: int) -> List[str]:
        """Tasks with a head that are first trained after ``experience`` (only under DDP, see :meth:`_prepare_ddp`)."""
        earlier = {t for tasks in self.experiences()[: experience + 1] for t in tasks}
        return [t for tasks in self.experiences()[experience + 1 :] for t in tasks if t not in earlier and t in self.task_specs]

    def validate_schedule(self) -> None:
        """Check trainer settings against the paradigm's schedule (override to add checks)."""

    def experience_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.epochs_per_experience(), len(self.experiences()) - 1)

    def tasks_for_epoch(self, epoch: int) -> List[str]:
        """Tasks whose training data the stream serves at ``epoch``."""
        return list(self.experiences()[self.experience_of_epoch(epoch)])

    def tasks_for_evaluation(self) -> List[str]:
        """Tasks the model can be tested on: those it has heads for."""
        return list(self.task_specs)

    # ------------------------------------------------------------------ experience hooks
    def on_train_epoch_start(self) -> None:
        epoch = self.current_epoch
        seed_epoch(epoch)  # exact resume, and no dependence on later domains (framework/core/seeding.py)
        experience = self.experience_of_epoch(epoch)
        tasks = self.experiences()[experience]
        starting = epoch == experience * self.epochs_per_experience()
        if starting:
            self.ensure_tasks(tasks)
        # every epoch, so a run resumed mid-experience freezes what the original run froze
        counts = self.freezing.apply(self.all_models(), tasks, self.future_tasks(experience))
        self.freezing.set_eval()
        if starting or experience not in self.trainable_counts:
            self.trainable_counts[experience] = counts
            rank_zero_info(
                f"experience {experience} ({'+'.join(tasks)}), freeze={self.freezing.policy!r}: "
                f"{counts['total']:,} trainable parameters of {counts['all']:,} "
                f"(backbone {counts['backbone']:,}, adapters {counts['adapters']:,}, heads {counts['heads']:,})"
            )
        if starting:
            self._dispatch("on_experience_start", experience, tasks)

    def train(self, mode: bool = True):
        """``nn.Module.train``, keeping modules frozen by the freezing policy in eval mode."""
        super().train(mode)
        if mode and hasattr(self, "freezing"):
            self.freezing.set_eval()
        return self

    def is_last_epoch_of_experience(self, epoch: int) -> bool:
        """Whether ``epoch`` ends its experience (or the run)."""
        return (epoch + 1) % self.epochs_per_experience() == 0 or epoch + 1 >= (self.trainer.max_epochs or 0)

    def on_train_epoch_end(self) -> None:
        epoch = self.current_epoch
        experience = self.experience_of_epoch(epoch)
        if self.is_last_epoch_of_experience(epoch):
            self._dispatch("on_experience_end", experience, self.experiences()[experience])

    def _dispatch(self, hook: str, experience: int, tasks: Sequence[str]) -> None:
        for callback in self.trainer.callbacks:
            fn = getattr(callback, hook, None)
            if callable(fn):
                # named like Lightning's own callback hooks, so `--trainer.profiler simple` times them
                with self.trainer.profiler.profile(f"[Callback]{callback.state_key}.{hook}"), trainer_precision(self.trainer):
                    fn(self.trainer, self, experience, list(tasks))

    # ------------------------------------------------------------------ steps
    def _forward_task(self, task: str, sub: Mapping[str, Tensor]) -> Tuple[TaskHead, Tensor, Tensor]:
        model = self.model_for(task)
        head = model.head(task)
        outputs = model(sub["image"], task)
        return head, outputs, head.loss(outputs, sub["target"])

    def _refuse_single_sample_batches(self, datamodule) -> None:
        """A trainable BatchNorm cannot normalise a training batch of one sample: say so before training
        (naming the domains) instead of failing at the end of the first epoch."""
        trainable_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) and any(p.requires_grad for p in m.parameters()) for m in self.modules())
        lonely = single_sample_last_batches(datamodule) if trainable_bn and datamodule is not None else []
        if lonely:
            raise ValueError(
                f"{type(self).__name__}: the backbone {self.hparams.backbone!r} has BatchNorm layers, which cannot train on a batch of one "
                f"sample, but the last training batch of {', '.join(lonely)} holds one; set drop_last: true on that domain "
                f"(or another batch_size)"
            )

    def training_step(self, batch: Mapping[str, Mapping[str, Tensor]], batch_idx: int) -> Tensor:
        total = None
        losses: Dict[str, Tensor] = {}
        # "samples": each task's mean loss times its share of the batch (None: "equal", a plain sum)
        samples = sum(len(sub["target"]) for sub in batch.values()) if self.hparams.task_loss_weighting == "samples" else None
        for task, sub in batch.items():
            _, _, loss = self._forward_task(task, sub)
            losses[task] = loss
            self.log(f"train/{task}/loss", loss, batch_size=len(sub["target"]), on_step=False, on_epoch=True)
            if samples is not None:
                loss = loss * (len(sub["target"]) / samples)
            total = loss if total is None else total + loss
        if total is None:
            raise ValueError("training_step received an empty batch dict")
        reg = self.regularization_loss(batch)
        if reg is not None:
            self.log("train/regularization", reg, batch_size=1, on_step=False, on_epoch=True)
            total = total + reg
        check_loss(self, total, losses, reg)  # a diverged run stops here (framework/core/divergence.py)
        self.log("train/loss", total, prog_bar=True, batch_size=1)
        return total

    def regularization_loss(self, batch: Mapping[str, Mapping[str, Tensor]]) -> Optional[Tensor]:
        """A penalty added to the training loss (e.g. EWC, LwF); ``None`` (none) by default."""
        return None

    def _eval_step(self, batch: Mapping[str, Mapping[str, Tensor]], stage: str) -> None:
        for task, sub in batch.items():
            if stage == "val" and task not in self.task_specs:
                continue  # a later experience's domain: no head yet, nothing to validate
            head, outputs, loss = self._forward_task(task, sub)
            metrics = self.metrics[f"{stage}_{task}"]
            metrics.update(**head.metric_inputs(outputs, sub["target"]))
            n = len(sub["target"])
            self.log(f"{stage}/{task}/loss", loss, batch_size=n, add_dataloader_idx=False)
            self.log_dict(metrics, batch_size=n, add_dataloader_idx=False, prog_bar=False)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Dict[str, Any]]:
        """``{task: {**head.predict(outputs), "target": ..., "id": ..., "affine": ...}}`` (the last three when the data
        has them; ``affine``: a NIfTI input's grid, for its predicted mask)."""
        out = {}
        for task, sub in batch.items():
            model = self.model_for(task)
            head = model.head(task)
            predictions: Dict[str, Any] = dict(head.predict(model(sub["image"], task)))
            predictions.update({key: sub[key] for key in ("target", "id", "affine") if key in sub})
            out[task] = predictions
        return out

    def evaluate(self, task: str, dataloader: Iterable[Mapping[str, Mapping[str, Tensor]]], key: Optional[str] = None) -> Dict[str, float]:
        """Evaluate one task's head on a keyed dataloader outside the Lightning loops.

        Lightning cannot run ``trainer.test`` inside ``fit``; this is the experience-end
        evaluation loop, with the head's own torchmetrics collection (see
        :func:`~framework.metrics.evaluation.evaluate_head`: DDP ranks share the data, no sample twice).

        Args:
            task: the task whose head is evaluated.
            dataloader: batches ``{key: {"image", "target"}}``.
            key: the batch key holding the data (default ``task``; another name for a cross-domain set).

        Returns:
            metric name -> value (the head's :meth:`make_metrics`, plus ``score`` = the primary metric).
        """
        check_module(self, f"evaluating task {task!r}")
        model = self.model_for(task)
        was_training = self.training
        self.eval()
        try:
            return evaluate_head(model, model.head(task), dataloader, key or task, self.device)
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        groups = [{"params": params, "name": name} for name, params in self.optimizer_groups() if params]
        if not groups:
            raise ValueError(f"{type(self).__name__}: nothing to train (every parameter is frozen and no head exists)")
        return torch.optim.AdamW(groups, lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)

    def _trainable(self, module: nn.Module) -> List[nn.Parameter]:
        """Parameters the optimizer holds: trainable ones, and those only the freezing policy froze
        (so parameter groups stay the same whatever the current experience freezes)."""
        return [p for p in module.parameters() if p.requires_grad or self.freezing.froze(p)]

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        check_module(self, "saving a checkpoint")  # a non-finite model never becomes last.ckpt
        adapters = {}
        for name in self.task_specs:
            adapter = self.model_for(name).adapter_of_task.get(name)
            if adapter is not None:
                adapters[name] = adapter.to_dict()
        checkpoint[CHECKPOINT_KEY] = {
            "format": CHECKPOINT_FORMAT,
            "paradigm": type(self).__name__,
            "tasks": [spec.to_dict() for spec in self.task_specs.values()],
            "adapters": adapters,  # task -> the adapter it brought, rebuilt before strict loading
            "initial_tasks": list(self.initial_tasks),
            # the backbone's architecture and tokenizer files: the checkpoint rebuilds its model anywhere
            "architecture": self.architecture.to_record() if self.architecture is not None else None,
        }

    def on_load_checkpoint(self, checkpoint: Dict[str, Any]) -> None:
        """Rebuild the heads and adapters stored in the checkpoint before Lightning loads the weights (strictly)."""
        meta = checkpoint.get(CHECKPOINT_KEY)
        ckpt = getattr(self._trainer, "ckpt_path", None) if self._trainer is not None else None
        check_state_dict(checkpoint.get("state_dict", {}), f"--ckpt_path {ckpt}" if ckpt else "checkpoint")
        if meta is None:
            raise ValueError(
                f"checkpoint has no '{CHECKPOINT_KEY}' entry with task specs; it was not written by a MedCL module"
            )
        if meta.get("paradigm") != type(self).__name__:
            raise ValueError(
                f"checkpoint field '{CHECKPOINT_KEY}.paradigm' is {meta.get('paradigm')!r}, but it is being loaded into "
                f"{type(self).__name__}; load it with that class"
            )
        for i, spec, adapter in self._stored_tasks(meta, "checkpoint"):
            offered = self.stream_specs.get(spec.name)
            if offered is not None and not spec.same_task(offered):
                raise ValueError(
                    f"checkpoint field '{CHECKPOINT_KEY}.tasks[{i}]' ({spec.name!r}) differs from the data's task: "
                    f"{spec.to_dict()} vs {offered.to_dict()}"
                )
            if spec.name not in self.task_specs:  # heads already present were added from the data, checked above
                with self.rebuilding():
                    self.add_task(spec, adapter=adapter)
        stored = [t.get("name") for t in meta.get("tasks", [])]
        if list(self.task_specs) != stored:
            raise ValueError(
                f"{'--ckpt_path ' + str(ckpt) if ckpt else 'checkpoint'}: it was written for the tasks {stored}, but this config's "
                f"stream is {list(self.stream_specs) or list(self.task_specs)}; resume with the same domains in the same order, or grow the "
                f"trained model with new domains in a new run: --model.init_args.init_from <checkpoint>"
            )
        self.initial_tasks = list(meta.get("initial_tasks", self.initial_tasks))

    @staticmethod
    def _stored_tasks(meta: Mapping[str, Any], where: str, key: str = CHECKPOINT_KEY) -> Iterable[Tuple[int, TaskSpec, Optional[AdapterSpec]]]:
        """``(index, spec, adapter it brought)`` for every task stored in a checkpoint entry with
        ``tasks`` and ``adapters`` (the ``medcl`` entry, or ``key``, e.g. LwF's teacher)."""
        adapters = meta.get("adapters", {})
        for i, data in enumerate(meta.get("tasks", [])):
            spec = TaskSpec.from_dict(data, source=f"{where} field '{key}.tasks[{i}]'")
            stored = adapters.get(spec.name)
            source = f"{where} field '{key}.adapters.{spec.name}'"
            yield i, spec, None if stored is None else AdapterSpec.from_dict(stored, source=source)

    # ------------------------------------------------------------------ growing a trained model
    def load_initial_model(self, path: Union[str, Path]) -> None:
        """Rebuild and strictly load a MedCL checkpoint's model (``init_from``); its tasks become old tasks.

        Raises:
            FileNotFoundError: if the file does not exist.
            ValueError: if it is not a MedCL checkpoint, was written by a paradigm with another model
                layout, or its backbone or heads differ from this configuration.
        """
        path = Path(path)
        where = f"init_from {str(path)!r}"
        checkpoint = load_checkpoint(path, "init_from")
        meta = checkpoint.get(CHECKPOINT_KEY) if isinstance(checkpoint, dict) else None
        if not isinstance(meta, dict) or "state_dict" not in checkpoint:
            found = sorted(checkpoint)[:8] if isinstance(checkpoint, dict) else type(checkpoint).__name__
            raise ValueError(
                f"{where}: not a MedCL checkpoint: expected a Lightning checkpoint with 'state_dict' and a '{CHECKPOINT_KEY}' "
                f"entry (written by medcl fit), found {found}"
            )
        paradigm, mine = meta.get("paradigm"), type(self).__name__
        if paradigm != mine and not (paradigm in SHARED_MODEL_PARADIGMS and mine in SHARED_MODEL_PARADIGMS):
            raise ValueError(
                f"{where}: written by {paradigm}, whose model layout differs from {mine}'s; "
                f"grow it with {paradigm} (or any of {list(SHARED_MODEL_PARADIGMS)} for a shared-model checkpoint)"
            )
        kinds = {t.get("kind") for t in meta.get("tasks", []) if isinstance(t, Mapping)}
        native = (meta.get("architecture") or {}).get("model_cfg", {}).get("vision_cfg", {}).get("image_size")
        problems = hparam_differences(checkpoint.get("hyper_parameters", {}), self.hparams, stored_kinds=kinds, native_size=native)
        if problems:
            raise ValueError(f"{where}: the checkpoint's model differs from this configuration ({'; '.join(problems)}); set the config to the checkpoint's values")
        check_state_dict(checkpoint["state_dict"], where)
        with self.rebuilding():
            for _, spec, adapter in self._stored_tasks(meta, where):
                self.add_task(spec, adapter=adapter)
        try:
            self.load_state_dict(checkpoint["state_dict"], strict=True)
        except RuntimeError as err:
            raise ValueError(f"{where}: the weights do not fit the rebuilt model: {str(err).splitlines()[0]}") from None
        self.initial_tasks = list(self.task_specs)
        rank_zero_info(f"{where}: loaded tasks {self.initial_tasks} and adapters {[a.modality for m in self.all_models() for a in m.adapters.specs.values()]}")
