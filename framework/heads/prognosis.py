"""Prognosis (survival) head: a risk score from the pooled image embedding."""
from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np
import torch
from torch import Tensor, nn
from torchmetrics import MetricCollection

from framework.heads.base import TaskHead, soft_kl_divergence
from framework.heads.registry import register_head
from framework.metrics.survival import ConcordanceIndex, split_survival_target
from framework.core.specs import TaskSpec

__all__ = ["PrognosisHead", "PROGNOSIS_LOSSES"]

PROGNOSIS_LOSSES = ("cox", "mtlr")


@register_head("prognosis")
class PrognosisHead(TaskHead):
    """Survival prediction from the pooled, L2-normalised image embedding.

    Targets are ``(B, 2)`` tensors of (time, event), event 1 = observed, 0 = censored.

    * ``loss: cox`` — one log-risk per sample, trained with the Cox partial likelihood
      (torchsurv ``neg_partial_log_likelihood``, Efron ties); the risk score is the log-risk.
    * ``loss: mtlr`` — discrete-time multi-task logistic regression (Yu et al. 2011), the head the
      UNICON authors use: one logit per cut point of ``spec.time_bins``, trained with pycox's
      ``nll_mtlr`` on times discretised by pycox's ``LabTransDiscreteTime``.  The risk score is
      the negative restricted mean survival time over the grid (higher = earlier event).

    The matrix score is the censoring-aware concordance index (``c_index``).

    Args:
        spec: a ``prognosis`` task (``time_bins`` needed for ``mtlr``).
        embed_dim: backbone embedding width.
        loss: ``"cox"`` or ``"mtlr"``.
        hidden_dim: width of a hidden layer (0 = a linear head).
        dropout: dropout before the output layer.

    Raises:
        ValueError: on an unknown loss, ``mtlr`` without at least two time bins, or invalid sizes.
    """

    score_name = "c_index"

    def __init__(self, spec: TaskSpec, embed_dim: int, loss: str = "cox", hidden_dim: int = 0, dropout: float = 0.0) -> None:
        super().__init__(spec, embed_dim)
        if loss not in PROGNOSIS_LOSSES:
            raise ValueError(f"{type(self).__name__} (task '{spec.name}'): loss expected one of {list(PROGNOSIS_LOSSES)}, found {loss!r}")
        if loss == "mtlr" and len(spec.time_bins) < 2:
            raise ValueError(
                f"{type(self).__name__} (task '{spec.name}'): loss 'mtlr' needs at least 2 cut points in the task's "
                f"time_bins, found {list(spec.time_bins)}; survival data modules derive them from the training times"
            )
        if isinstance(hidden_dim, bool) or not isinstance(hidden_dim, int) or hidden_dim < 0:
            raise ValueError(f"{type(self).__name__}: hidden_dim expected an integer >= 0, found {hidden_dim!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout expected in [0, 1), found {dropout}")
        self.loss_name = loss
        outputs = 1 if loss == "cox" else len(spec.time_bins)
        layers: List[nn.Module] = []
        width = embed_dim
        if hidden_dim:
            layers += [nn.Linear(embed_dim, hidden_dim), nn.ReLU()]
            width = hidden_dim
        layers += [nn.Dropout(dropout), nn.Linear(width, outputs)]
        self.net = nn.Sequential(*layers)
        if loss == "mtlr":
            cuts = np.asarray(spec.time_bins, dtype=np.float64)
            # the cut points on the model's device: discretising targets needs no trip to the host (see discretise)
            self.register_buffer("cuts", torch.tensor(cuts, dtype=torch.float64), persistent=False)
            # bin widths for the restricted mean survival time (derived from the spec, not saved)
            widths = np.diff(cuts, prepend=min(cuts[0], 0.0))
            self.register_buffer("bin_widths", torch.tensor(widths, dtype=torch.float32), persistent=False)

    def forward(self, backbone: nn.Module, images: Tensor) -> Tensor:
        self.check_images(images)
        out = self.net(backbone.encode_image(images, normalize=True))
        return out[:, 0] if self.loss_name == "cox" else out

    def _target(self, outputs: Tensor, target: Tensor):
        if target.shape[0] != outputs.shape[0]:
            raise ValueError(f"task '{self.spec.name}': target has {target.shape[0]} samples, outputs have {outputs.shape[0]}")
        return split_survival_target(target, f"task '{self.spec.name}' target")

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        time, event = self._target(outputs, target)
        if self.loss_name == "cox":
            from torchsurv.loss.cox import neg_partial_log_likelihood

            if not event.any() or len(event) < 2:
                # no event, or one sample (e.g. a replayed exemplar): the partial likelihood has no
                # term comparing samples, so the loss is 0 (torchsurv refuses both cases)
                return outputs.sum() * 0.0
            return neg_partial_log_likelihood(outputs.float(), event, time, ties_method="efron")
        from pycox.models.loss import nll_mtlr

        index, observed = self.discretise(time, event)
        return nll_mtlr(outputs.float(), index, observed)

    def discretise(self, time: Tensor, event: Tensor) -> Tuple[Tensor, Tensor]:
        """``(bin index, observed)`` of survival targets on the time grid, on the targets' device.

        pycox's ``LabTransDiscreteTime(cuts)`` transform (tested equal in tests/test_task_heads.py), in
        torch so that a training step never waits for the host: a time after the last cut is censored
        there; an event goes to the first cut at or after its time, a censoring to the last cut at or
        before it (a censoring before the first cut, which pycox refuses, to the first).
        """
        cuts = self.cuts.to(time.device)
        t = time.detach().to(torch.float64)
        observed = event.detach() > 0.5
        late = t > cuts[-1]
        t = torch.where(late, cuts[-1], t)
        observed = observed & ~late
        at_or_after = torch.searchsorted(cuts, t, right=False)
        at_or_before = (torch.searchsorted(cuts, t, right=True) - 1).clamp_min(0)
        return torch.where(observed, at_or_after, at_or_before), observed.to(torch.float32)

    def survival(self, outputs: Tensor) -> Tensor:
        """MTLR survival function ``S(t_k)`` at the cut points, ``(B, K)``."""
        if self.loss_name != "mtlr":
            raise ValueError(f"task '{self.spec.name}': survival curves need loss 'mtlr', this head uses {self.loss_name!r}")
        from pycox.models.utils import cumsum_reverse, pad_col

        pmf = pad_col(cumsum_reverse(outputs.float(), dim=1)).softmax(dim=1)[:, :-1]
        return 1.0 - pmf.cumsum(dim=1)

    def risk(self, outputs: Tensor) -> Tensor:
        """Risk score per sample (higher = earlier event)."""
        if self.loss_name == "cox":
            return outputs.float()
        return -(self.survival(outputs) * self.bin_widths).sum(dim=1)

    def distillation_loss(self, outputs: Tensor, teacher_outputs: Tensor, temperature: float = 1.0) -> Tensor:
        """``cox``: MSE between log-risks (``temperature`` unused); ``mtlr``: Hinton KL * T^2 between the
        event-time distributions over the K+1 bins (softmax of pycox's cumulative MTLR logits)."""
        self._check_distillation(outputs, teacher_outputs)
        if self.loss_name == "cox":
            return super().distillation_loss(outputs, teacher_outputs, temperature)
        from pycox.models.utils import cumsum_reverse, pad_col

        def bin_logits(x: Tensor) -> Tensor:
            return pad_col(cumsum_reverse(x.float(), dim=1))

        return soft_kl_divergence(bin_logits(outputs), bin_logits(teacher_outputs.detach()), temperature, dim=1)

    def make_metrics(self) -> MetricCollection:
        return MetricCollection({"c_index": ConcordanceIndex()})

    def metric_inputs(self, outputs: Tensor, target: Tensor) -> Dict[str, Tensor]:
        return {"preds": self.risk(outputs), "target": target}

    def unrouted_outputs(self, outputs: Tensor, target: Tensor) -> Tensor:
        """Zero outputs: one risk for every wrongly routed patient, an uninformative ranking (a tie in
        the C-index) rather than a guess."""
        return torch.zeros_like(outputs, dtype=torch.float32)

    def predict(self, outputs: Tensor) -> Dict[str, Tensor]:
        out = {"risk": self.risk(outputs)}
        if self.loss_name == "mtlr":
            out["survival"] = self.survival(outputs)
        return out

    def describe_target(self, target: Tensor) -> Dict[str, Tensor]:
        time, event = split_survival_target(target, f"task '{self.spec.name}' target")
        return {"time": time, "event": event.long()}

    def column_names(self, key: str, width: int) -> List[str]:
        if key == "survival" and width == len(self.spec.time_bins):
            return [f"S(t={t:g})" for t in self.spec.time_bins]
        return super().column_names(key, width)
