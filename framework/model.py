"""The growing model: one backbone plus a dictionary of task heads."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from torch import Tensor, nn

from framework.backbone import CLIPBackbone
from framework.heads import TaskHead, build_head
from framework.specs import TaskSpec

__all__ = ["MedCLModel"]


class MedCLModel(nn.Module):
    """A CLIP backbone with UNICON-style expandable heads.

    :meth:`add_task` is the only way the model grows; each task owns its head and the task is
    selected explicitly at inference (``model(images, task="bloodmnist")``).

    Args:
        backbone: keyword arguments for :class:`~framework.backbone.CLIPBackbone`.
        head_args: per-kind keyword arguments for heads, e.g.
            ``{"classification": {"learn_class_embeddings": True}}``.

    Raises:
        ValueError: if ``head_args`` is not a mapping of kind -> mapping.
    """

    def __init__(self, backbone: Optional[Mapping[str, Any]] = None, head_args: Optional[Mapping[str, Mapping[str, Any]]] = None):
        super().__init__()
        head_args = dict(head_args or {})
        for kind, args in head_args.items():
            if not isinstance(args, Mapping):
                raise ValueError(f"MedCLModel: head_args[{kind!r}] expected a mapping of keyword arguments, found {args!r}")
        self.head_args = head_args
        self.backbone = CLIPBackbone(**dict(backbone or {}))
        self.heads = nn.ModuleDict()
        self.specs: Dict[str, TaskSpec] = {}

    @property
    def tasks(self) -> list:
        """Task names in the order they were added."""
        return list(self.heads.keys())

    def add_task(self, spec: TaskSpec) -> TaskHead:
        """Grow the model by one task head.

        Raises:
            ValueError: if a task of that name already exists, or no head serves its kind.
        """
        if not isinstance(spec, TaskSpec):
            raise ValueError(f"MedCLModel.add_task: expected a TaskSpec, found {type(spec).__name__}")
        if spec.name in self.heads:
            raise ValueError(f"MedCLModel.add_task: task {spec.name!r} already exists (tasks: {self.tasks})")
        head = build_head(spec, self.backbone.embed_dim, self.head_args.get(spec.kind))
        head.on_add(self.backbone)  # may build layers from the backbone's feature shapes
        head.to(next(self.backbone.parameters()).device)
        self.heads[spec.name] = head
        self.specs[spec.name] = spec
        return head

    def head(self, task: str) -> TaskHead:
        """The head of ``task``.

        Raises:
            KeyError: naming the task and the tasks the model knows.
        """
        if task not in self.heads:
            raise KeyError(f"model has no head for task {task!r}; tasks learned so far: {self.tasks}")
        return self.heads[task]

    def forward(self, images: Tensor, task: str) -> Tensor:
        """Raw outputs of ``task``'s head (logits, log-risks, mask logits)."""
        return self.head(task)(self.backbone, images)
