"""CLIP-style classification heads: cosine similarity between image and class-prompt embeddings."""
from __future__ import annotations

import math
from typing import Dict, List

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MultilabelAccuracy


from framework.heads.base import TaskHead, soft_kl_divergence
from framework.metrics.auroc import DefinedAUROC
from framework.heads.registry import register_head
from framework.core.specs import TaskSpec

__all__ = ["ClassificationHead", "MultilabelHead"]


@register_head("classification")
class ClassificationHead(TaskHead):
    """Zero-shot-style classifier: ``logits = exp(t) * cos(image_emb, class_emb)``.

    Class embeddings are the text embeddings of the spec's prompts.  With
    ``learn_class_embeddings=True`` they become parameters, initialised from those text embeddings
    when the head is added to a model (:meth:`on_add`).  On a backbone without a text side (a
    vision-only custom tower, ``has_text`` false) they are always learned, from a random start.

    Args:
        spec: a ``classification`` task.
        embed_dim: backbone embedding width.
        learn_class_embeddings: train class embeddings instead of re-reading the text tower.
        init_temperature: initial softmax temperature (CLIP uses 0.07).
        max_logit_scale: clamp on ``exp(t)`` (CLIP uses 100).
        label_smoothing: cross-entropy label smoothing.

    Raises:
        ValueError: on an invalid temperature or label smoothing.
    """

    score_name = "acc"
    zero_shot = True

    def __init__(
        self,
        spec: TaskSpec,
        embed_dim: int,
        learn_class_embeddings: bool = False,
        init_temperature: float = 0.07,
        max_logit_scale: float = 100.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__(spec, embed_dim)
        if not 0.0 < init_temperature <= 1.0:
            raise ValueError(f"{type(self).__name__}: init_temperature expected in (0, 1], found {init_temperature}")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"{type(self).__name__}: label_smoothing expected in [0, 1), found {label_smoothing}")
        if max_logit_scale < 1.0 / init_temperature:
            raise ValueError(
                f"{type(self).__name__}: max_logit_scale={max_logit_scale} is below 1/init_temperature={1.0 / init_temperature}"
            )
        self.learn_class_embeddings = bool(learn_class_embeddings)
        self.max_logit_scale = float(max_logit_scale)
        self.label_smoothing = float(label_smoothing)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        if self.learn_class_embeddings:
            self.class_embeddings = nn.Parameter(torch.zeros(spec.num_classes, embed_dim))

    def on_add(self, backbone: nn.Module) -> None:
        if not getattr(backbone, "has_text", True):  # no prompt embeddings: learn the class embeddings from random
            if not self.learn_class_embeddings:
                self.learn_class_embeddings = True
                self.class_embeddings = nn.Parameter(torch.zeros(self.spec.num_classes, self.embed_dim))
            with torch.no_grad():
                self.class_embeddings.normal_()
            return
        if self.learn_class_embeddings:
            with torch.no_grad():
                text = backbone.encode_prompts(self.spec.prompts)
                self.class_embeddings.copy_(text.to(self.class_embeddings.device))

    def class_embeddings_from(self, backbone: nn.Module) -> Tensor:
        """Normalised class embeddings ``(num_classes, embed_dim)``."""
        if not self.learn_class_embeddings:
            return backbone.encode_prompts(self.spec.prompts)
        return F.normalize(self.class_embeddings, dim=-1)

    def forward(self, backbone: nn.Module, images: Tensor) -> Tensor:
        self.check_images(images)
        image_emb = backbone.encode_image(images, normalize=True)
        text_emb = self.class_embeddings_from(backbone).to(image_emb.dtype)
        scale = self.logit_scale.exp().clamp(max=self.max_logit_scale)
        return scale * image_emb @ text_emb.t()

    def _check_target(self, outputs: Tensor, target: Tensor) -> None:
        if target.ndim != 1 or target.shape[0] != outputs.shape[0]:
            raise ValueError(
                f"task '{self.spec.name}': target expected shape ({outputs.shape[0]},) of class indices, found {tuple(target.shape)}"
            )

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        self._check_target(outputs, target)
        return F.cross_entropy(outputs, target.long(), label_smoothing=self.label_smoothing)

    def unrouted_outputs(self, outputs: Tensor, target: Tensor) -> Tensor:
        """Logits whose arg-max is never the target class: a wrong route is a wrong answer."""
        wrong = torch.zeros_like(outputs, dtype=torch.float32)
        return wrong.scatter_(1, target.long().view(-1, 1), -1e4)

    def metric_inputs(self, outputs: Tensor, target: Tensor):
        # Probabilities, not logits: torchmetrics softmaxes a batch only when some value lies outside
        # [0, 1], so a batch of logits that all lie in [0, 1] would be ranked as probabilities and
        # the AUROC would depend on a softmax-invariant shift (tests/test_metric_crosschecks.py).
        return {"preds": outputs.float().softmax(dim=-1), "target": target.long()}

    def make_metrics(self) -> MetricCollection:
        n = self.spec.num_classes
        return MetricCollection(
            {
                "acc": MulticlassAccuracy(num_classes=n, average="micro"),
                "balanced_acc": MulticlassAccuracy(num_classes=n, average="macro"),
                "auroc": DefinedAUROC(n),  # NaN, not 0, where undefined (framework/metrics/auroc.py)
            }
        )

    def distillation_loss(self, outputs: Tensor, teacher_outputs: Tensor, temperature: float = 1.0) -> Tensor:
        """Hinton distillation: ``KL(softmax(teacher/T) || softmax(student/T)) * T^2`` over classes, batch mean."""
        self._check_distillation(outputs, teacher_outputs)
        return soft_kl_divergence(outputs, teacher_outputs, temperature, dim=1)

    def predict(self, outputs: Tensor) -> Dict[str, Tensor]:
        probabilities = outputs.float().softmax(dim=1)
        return {"prediction": probabilities.argmax(dim=1), "probabilities": probabilities}

    def column_names(self, key: str, width: int) -> List[str]:
        if key == "probabilities" and width == self.spec.num_classes:
            return [f"p({name})" for name in self.spec.class_names]
        return super().column_names(key, width)


@register_head("multilabel")
class MultilabelHead(ClassificationHead):
    """Multi-label variant: one independent sigmoid per class prompt (e.g. ChestMNIST findings)."""

    def _check_target(self, outputs: Tensor, target: Tensor) -> None:
        if target.shape != outputs.shape:
            raise ValueError(
                f"task '{self.spec.name}': target expected shape {tuple(outputs.shape)} of 0/1 labels, found {tuple(target.shape)}"
            )

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        self._check_target(outputs, target)
        return F.binary_cross_entropy_with_logits(outputs, target.float())

    def make_metrics(self) -> MetricCollection:
        n = self.spec.num_classes
        return MetricCollection(
            {"acc": MultilabelAccuracy(num_labels=n, average="micro"), "auroc": DefinedAUROC(n, multilabel=True)}
        )

    def metric_inputs(self, outputs: Tensor, target: Tensor):
        return {"preds": outputs.sigmoid(), "target": target.long()}

    def unrouted_outputs(self, outputs: Tensor, target: Tensor) -> Tensor:
        """Logits that get every label wrong."""
        return torch.where(target.bool(), -1e4, 1e4).to(torch.float32)

    def distillation_loss(self, outputs: Tensor, teacher_outputs: Tensor, temperature: float = 1.0) -> Tensor:
        """BCE of ``student/T`` against the soft targets ``sigmoid(teacher/T)``, minus the teacher's own
        BCE (its entropy, a constant) so it is the per-label binary KL: 0 for equal outputs; ``* T^2``."""
        self._check_distillation(outputs, teacher_outputs)
        t = float(temperature)
        teacher = teacher_outputs.detach().float() / t
        soft = teacher.sigmoid()
        bce = F.binary_cross_entropy_with_logits(outputs.float() / t, soft)
        return (bce - F.binary_cross_entropy_with_logits(teacher, soft)) * t * t

    def predict(self, outputs: Tensor) -> Dict[str, Tensor]:
        probabilities = outputs.float().sigmoid()
        return {"prediction": (probabilities > 0.5).long(), "probabilities": probabilities}

    def column_names(self, key: str, width: int) -> List[str]:
        if key == "prediction" and width == self.spec.num_classes:
            return [f"has({name})" for name in self.spec.class_names]
        return super().column_names(key, width)
