"""The interface every task head implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict, List

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection

from framework.core.specs import TaskSpec

__all__ = ["TaskHead", "soft_kl_divergence"]


def soft_kl_divergence(outputs: Tensor, teacher_outputs: Tensor, temperature: float, dim: int = 1) -> Tensor:
    """Hinton et al. (2015) distillation: ``KL(softmax(teacher/T) || softmax(student/T)) * T^2``
    over ``dim``, averaged over every other position (samples, pixels, voxels)."""
    t = float(temperature)
    log_student = F.log_softmax(outputs.float() / t, dim=dim)
    log_teacher = F.log_softmax(teacher_outputs.detach().float() / t, dim=dim)
    return (log_teacher.exp() * (log_teacher - log_student)).sum(dim=dim).mean() * t * t


class TaskHead(nn.Module, ABC):
    """A head owns everything task-specific: how it reads the backbone, its loss, its metrics and
    what it predicts.

    Subclasses set :attr:`score_name`, the metric used for the continual accuracy matrix.

    Args:
        spec: the task this head serves.
        embed_dim: width of the backbone's pooled embedding.
    """

    #: key of the metric (in :meth:`make_metrics`) reported in the continual-learning matrix
    score_name: str = "acc"
    #: an untrained head predicts from the text tower's prompt embeddings (CLIP zero-shot), so the
    #: task can be scored before it is trained (forward transfer, cross-task zero-shot)
    zero_shot: bool = False

    def __init__(self, spec: TaskSpec, embed_dim: int) -> None:
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"{type(self).__name__}: embed_dim expected a positive integer, found {embed_dim!r}")
        self.spec = spec
        self.embed_dim = embed_dim

    def on_add(self, backbone: nn.Module) -> None:
        """Called once when the head joins a model, before its weights can be loaded: initialise
        from the text tower, or build layers that depend on the backbone's feature shapes."""

    def check_images(self, images: Tensor) -> None:
        """Refuse images whose rank does not match the task's ``spatial_dims``.

        Raises:
            ValueError: naming the task, what it expects and the shape found.
        """
        expected = 4 if self.spec.spatial_dims == 2 else 5
        if images.ndim != expected:
            what = "(B, C, H, W) images; it is 2D-only" if expected == 4 else "(B, C, D, H, W) volumes"
            raise ValueError(
                f"task '{self.spec.name}' (spatial_dims={self.spec.spatial_dims}) expected {what}, found a batch of shape {tuple(images.shape)}"
            )

    @abstractmethod
    def forward(self, backbone: nn.Module, images: Tensor) -> Tensor:
        """Run the backbone as this head needs it and return raw outputs (e.g. logits)."""

    @abstractmethod
    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        """Scalar training loss."""

    @abstractmethod
    def make_metrics(self) -> MetricCollection:
        """Fresh torchmetrics collection; must contain :attr:`score_name`."""

    def metric_inputs(self, outputs: Tensor, target: Tensor) -> Dict[str, Any]:
        """Arguments for ``metrics.update``; override when the metric needs something else."""
        return {"preds": outputs, "target": target}

    def unrouted_outputs(self, outputs: Tensor, target: Tensor) -> Tensor:
        """Outputs shaped like ``outputs`` that score an image as *wrong* for this task, for images a
        task router sent to another source or called unknown (task-agnostic evaluation,
        :mod:`framework.metrics.task_agnostic`: a wrong route counts as a wrong prediction).

        Raises:
            NotImplementedError: for a kind that does not say what a wrong route scores (its
                task-agnostic score is then not reported).
        """
        raise NotImplementedError(f"head kind {self.spec.kind!r} does not define unrouted_outputs (what a wrongly routed image scores)")

    @abstractmethod
    def predict(self, outputs: Tensor) -> Dict[str, Tensor]:
        """Named per-sample predictions from raw outputs.

        Tensors of shape ``(B,)`` or ``(B, K)`` are written as CSV columns (named by
        :meth:`column_names`), larger ones (masks) as image files, by
        :class:`~framework.callbacks.PredictionWriter`.
        """

    def distillation_loss(self, outputs: Tensor, teacher_outputs: Tensor, temperature: float = 1.0) -> Tensor:
        """Scalar knowledge-distillation loss pulling this head's raw ``outputs`` towards a frozen
        teacher's ``teacher_outputs`` for the same images (used by LwF); 0 when they are equal.

        Default: mean squared error between the raw outputs (``temperature`` unused); heads whose
        outputs are logits override it with a temperature-softened divergence.

        Raises:
            ValueError: if the two outputs differ in shape.
        """
        self._check_distillation(outputs, teacher_outputs)
        return F.mse_loss(outputs.float(), teacher_outputs.detach().float())

    def _check_distillation(self, outputs: Tensor, teacher_outputs: Tensor) -> None:
        if outputs.shape != teacher_outputs.shape:
            raise ValueError(
                f"task '{self.spec.name}': distillation expected student and teacher outputs of one shape, "
                f"found {tuple(outputs.shape)} and {tuple(teacher_outputs.shape)}"
            )

    def describe_target(self, target: Tensor) -> Dict[str, Tensor]:
        """Known targets as named per-sample columns for prediction files (masks: none)."""
        return {"true_label": target} if target.ndim <= 2 else {}

    def column_names(self, key: str, width: int) -> List[str]:
        """CSV column names of prediction ``key`` with ``width`` values per sample."""
        return [key] if width == 1 else [f"{key}_{i}" for i in range(width)]
