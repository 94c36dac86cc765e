"""The interface every task head implements."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Dict

from torch import Tensor, nn
from torchmetrics import MetricCollection

from framework.specs import TaskSpec

__all__ = ["TaskHead"]


class TaskHead(nn.Module, ABC):
    """A head owns everything task-specific: how it reads the backbone, its loss, its metrics.

    Subclasses set :attr:`score_name`, the metric used for the continual accuracy matrix.

    Args:
        spec: the task this head serves.
        embed_dim: width of the backbone's pooled embedding.
    """

    #: key of the metric (in :meth:`make_metrics`) reported in the continual-learning matrix
    score_name: str = "acc"

    def __init__(self, spec: TaskSpec, embed_dim: int) -> None:
        super().__init__()
        if not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"{type(self).__name__}: embed_dim expected a positive integer, found {embed_dim!r}")
        self.spec = spec
        self.embed_dim = embed_dim

    def on_add(self, backbone: nn.Module) -> None:
        """Called once when the head joins a model, e.g. to initialise from the text tower."""

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

    def predict(self, outputs: Tensor) -> Tensor:
        """Turn raw outputs into predictions (class indices by default)."""
        return outputs.argmax(dim=1)
