"""A new task kind, "regression": one number per image, from the pooled image embedding."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MetricCollection, R2Score

from framework.heads import TaskHead, register_head


@register_head("regression")
class RegressionHead(TaskHead):
    """A linear read-out of the image embedding, trained with the mean squared error; scored by R²."""

    score_name = "r2"

    def __init__(self, spec, embed_dim: int) -> None:
        super().__init__(spec, embed_dim)
        self.linear = nn.Linear(embed_dim, 1)

    @classmethod
    def check_spec(cls, spec) -> None:
        if spec.class_names or spec.label_names:
            raise ValueError(f"task '{spec.name}': a regression task has no class_names or label_names")

    def forward(self, backbone: nn.Module, images: Tensor) -> Tensor:
        self.check_images(images)
        return self.linear(backbone.encode_image(images)).squeeze(-1)

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        return F.mse_loss(outputs.float(), target.float())

    def make_metrics(self) -> MetricCollection:
        return MetricCollection({"r2": R2Score(), "mae": MeanAbsoluteError()})

    def metric_inputs(self, outputs: Tensor, target: Tensor):
        return {"preds": outputs.float(), "target": target.float()}

    def predict(self, outputs: Tensor):
        return {"value": outputs}
