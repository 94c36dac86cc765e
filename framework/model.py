"""The growing model: one backbone, per-modality adapters and a dictionary of task heads."""
from __future__ import annotations

import contextlib
import difflib
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Tuple, Union

from torch import Tensor, nn

from framework.adapters import AdapterSpec, ModalityAdapters, check_lora_options
from framework.adapters.domain_bn import DomainNorms
from framework.backbone import CLIPBackbone
from framework.backbone.custom import CustomBackbone
from framework.heads import TaskHead, build_head
from framework.heads.registry import HEAD_REGISTRY, registered_kinds
from framework.core.specs import TaskSpec
from framework.routing import TaskRouter, build_router

__all__ = ["MedCLModel"]


class MedCLModel(nn.Module):
    """A CLIP backbone with per-modality adapters and UNICON-style expandable heads.

    :meth:`add_task` is the only way the model grows; each task owns its head and the task is
    selected explicitly at inference (``model(images, task="bloodmnist")``), which also routes the
    image tower to the task's modality adapters (see :class:`~framework.adapters.ModalityAdapters`).

    A task brings adapters when its modality needs them: a patch embedding when its ``in_channels``
    is neither 1 nor 3, and, if ``lora`` is set, a LoRA for a modality no earlier task had.

    Args:
        backbone: keyword arguments for :class:`~framework.backbone.CLIPBackbone`, or, with a ``tower``
            key, for :class:`~framework.backbone.custom.CustomBackbone` (a user's own image tower).
        head_args: per-kind keyword arguments for heads, e.g.
            ``{"classification": {"learn_class_embeddings": True}}``.
        lora: LoRA options for new modalities (``r``, ``alpha``, ``dropout``, ``target_modules``),
            ``None`` for no LoRA.
        domain_batchnorm: every task gets its own copy of the image tower's BatchNorm layers
            (statistics and affine parameters; :mod:`framework.adapters.domain_bn`).
        router: options of a task router (``{kind: prototypes}``; :mod:`framework.routing`), or ``None``.

    Raises:
        ValueError: if ``head_args`` is not a mapping of kind -> mapping, or ``lora`` is invalid (or set
            for a custom backbone, which takes no adapters).
    """

    def __init__(
        self,
        backbone: Optional[Mapping[str, Any]] = None,
        head_args: Optional[Mapping[str, Mapping[str, Any]]] = None,
        lora: Optional[Mapping[str, Any]] = None,
        domain_batchnorm: bool = False,
        router: Optional[Mapping[str, Any]] = None,
    ):
        super().__init__()
        head_args = dict(head_args or {})
        for kind, args in head_args.items():
            if kind not in HEAD_REGISTRY:
                close = difflib.get_close_matches(str(kind), registered_kinds(), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise ValueError(
                    f"MedCLModel: head_args has options for task kind {kind!r}, expected one of {registered_kinds()}{hint} "
                    f"(options under an unknown kind would be ignored)"
                )
            if not isinstance(args, Mapping):
                raise ValueError(f"MedCLModel: head_args[{kind!r}] expected a mapping of keyword arguments, found {args!r}")
        self.head_args = head_args
        self.lora = check_lora_options(lora, "MedCLModel")
        config = dict(backbone or {})
        self.backbone = CustomBackbone(**config) if "tower" in config else CLIPBackbone(**config)
        if self.lora is not None and isinstance(self.backbone, CustomBackbone):
            raise ValueError(
                f"MedCLModel: lora needs an open_clip backbone (LoRA reaches into its image tower); the custom tower "
                f"{self.backbone.class_path!r} takes no adapters: set lora: null"
            )
        # the router copies the image tower as built, before adapters or BatchNorm copies change it
        self.router: Optional[TaskRouter] = build_router(router, self.backbone) if router is not None else None
        self.adapters = ModalityAdapters(self.backbone)
        if not isinstance(domain_batchnorm, bool):
            raise ValueError(f"MedCLModel: domain_batchnorm expected true or false, found {domain_batchnorm!r}")
        #: per-task BatchNorm copies (None: the tower's BatchNorm layers are shared by every task)
        self.domain_norms: Optional[DomainNorms] = DomainNorms(self.image_tower) if domain_batchnorm else None
        self.heads = nn.ModuleDict()
        self.specs: Dict[str, TaskSpec] = {}
        #: the adapter each task brought with it (stored in checkpoints, restored before loading)
        self.adapter_of_task: Dict[str, AdapterSpec] = {}

    @property
    def image_tower(self) -> nn.Module:
        """The image tower module (open_clip's ``visual``, or a custom backbone's tower)."""
        clip = getattr(self.backbone, "clip", None)
        return clip.visual if clip is not None else self.backbone.tower

    @property
    def tasks(self) -> list:
        """Task names in the order they were added."""
        return list(self.heads.keys())

    def add_task(self, spec: TaskSpec, adapter: Union[str, AdapterSpec, None] = "auto") -> TaskHead:
        """Grow the model by one task head (and its modality's adapters, if it needs new ones).

        Args:
            spec: the task.
            adapter: ``"auto"`` creates what a new modality needs (a patch embedding for an
                ``in_channels`` other than 1/3, LoRA if ``lora`` is set); an :class:`AdapterSpec` or
                ``None`` creates exactly that (checkpoint restore).

        Raises:
            ValueError: if a task of that name already exists, no head serves its kind, the
                task's ``in_channels`` does not fit its modality's patch embedding, or a custom
                tower cannot serve the task (:meth:`CustomBackbone.check_task`).
        """
        if not isinstance(spec, TaskSpec):
            raise ValueError(f"MedCLModel.add_task: expected a TaskSpec, found {type(spec).__name__}")
        if spec.name in self.heads:
            raise ValueError(f"MedCLModel.add_task: task {spec.name!r} already exists (tasks: {self.tasks})")
        custom = isinstance(self.backbone, CustomBackbone)
        if custom:  # no adapters; the tower's own channel count
            self.backbone.check_task(spec, adapter)
            adapter = None
        elif adapter == "auto":
            adapter = None
            if spec.modality not in self.adapters.modalities:
                needs_embedding = spec.in_channels not in (1, 3)
                if needs_embedding or self.lora is not None:
                    adapter = AdapterSpec(spec.modality, spec.in_channels if needs_embedding else 3, lora=self.lora)
        if adapter is not None and (not isinstance(adapter, AdapterSpec) or adapter.modality != spec.modality):
            raise ValueError(f"task '{spec.name}': adapter expected an AdapterSpec for modality {spec.modality!r}, found {adapter!r}")
        own = self.adapters.in_channels(spec.modality)
        if adapter is not None and adapter.needs_patch_embedding:
            own = adapter.in_channels
        if not custom:
            self._check_channels(spec, own)
        head = self.new_head(spec)
        if adapter is not None:
            self.adapters.add(adapter)
            self.adapters.visual.to(next(self.backbone.parameters()).device)
            self.adapter_of_task[spec.name] = adapter
        self.adapters.register_modality(spec.modality)
        if self.domain_norms is not None:
            self.domain_norms.add(spec.name)
            self.image_tower.to(next(self.backbone.parameters()).device)
        self.heads[spec.name] = head
        self.specs[spec.name] = spec
        if self.router is not None:
            self.router.add_task(spec.name, spec.source)
        return head

    @staticmethod
    def _check_channels(spec: TaskSpec, own: Optional[int]) -> None:
        if (own or 3) != spec.in_channels and not (own is None and spec.in_channels == 1):
            embedding = f"a patch embedding for {own} channels" if own else "no patch embedding of its own (1 or 3 channels)"
            raise ValueError(
                f"task '{spec.name}': in_channels={spec.in_channels}, but modality {spec.modality!r} has {embedding}; "
                f"give tasks with another channel count their own modality name"
            )

    def new_head(self, spec: TaskSpec, head_args: Optional[Mapping[str, Any]] = None) -> TaskHead:
        """An untrained head for ``spec`` on this backbone, on its device, NOT added to the model
        (:meth:`add_task` adds one; evaluation scores untrained heads zero-shot).

        Args:
            spec: the task.
            head_args: the head's keyword arguments (default: this model's ``head_args`` for the kind).

        Raises:
            ValueError: if no head serves the kind or it rejects the arguments.
        """
        head = build_head(spec, self.backbone.embed_dim, self.head_args.get(spec.kind) if head_args is None else head_args)
        with self.backbone.input_size(spec.image_size or None):
            head.on_add(self.backbone)  # may build layers from the backbone's feature shapes at the task's size
        return head.to(next(self.backbone.parameters()).device)

    def parameter_groups(self, select: Callable[[nn.Module], List[nn.Parameter]]) -> List[Tuple[str, List[nn.Parameter]]]:
        """Named parameter groups in growth order: the backbone (without adapters), then for each
        task its adapter (if it brought one) and its head.

        Args:
            select: picks a module's parameters for the optimizer (e.g. the trainable ones).
        """
        adapter_ids = {id(p) for p in self.adapters.all_parameters()}
        adapter_ids |= {id(p) for p in self.domain_norms.all_parameters()} if self.domain_norms is not None else set()
        chosen = select(self.backbone)
        chosen_ids = {id(p) for p in chosen}
        groups = [("backbone", [p for p in chosen if id(p) not in adapter_ids])]
        for name, head in self.heads.items():
            adapter = self.adapter_of_task.get(name)
            if adapter is not None:
                groups.append((f"adapter:{adapter.modality}", [p for p in self.adapters.parameters(adapter.modality) if id(p) in chosen_ids]))
            if self.domain_norms is not None and name in self.domain_norms:
                groups.append((f"batchnorm:{name}", [p for p in self.domain_norms.parameters(name) if id(p) in chosen_ids]))
            groups.append((f"head:{name}", select(head)))
        return groups

    def head(self, task: str) -> TaskHead:
        """The head of ``task``.

        Raises:
            KeyError: naming the task and the tasks the model knows.
        """
        if task not in self.heads:
            raise KeyError(f"model has no head for task {task!r}; tasks learned so far: {self.tasks}")
        return self.heads[task]

    def forward(self, images: Tensor, task: str) -> Tensor:
        """Raw outputs of ``task``'s head (logits, log-risks, mask logits), through its modality's adapters."""
        head = self.head(task)
        with self.route(self.specs[task]):
            return head(self.backbone, images)

    @contextlib.contextmanager
    def route(self, spec: TaskSpec) -> Iterator[None]:
        """Serve ``spec``: its modality's adapters (if the model has that modality), its BatchNorm copies
        (with ``domain_batchnorm``) and its input size."""
        with contextlib.ExitStack() as stack:
            if spec.modality in self.adapters.modalities:
                stack.enter_context(self.adapters.use(spec.modality))
            if self.domain_norms is not None:  # a task without copies (zero-shot of a new one) uses the shared layers
                stack.enter_context(self.domain_norms.use(spec.name))
            stack.enter_context(self.backbone.input_size(spec.image_size or None))
            yield
