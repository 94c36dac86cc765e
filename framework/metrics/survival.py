"""Censoring-aware concordance index as a torchmetrics ``Metric``.

torchsurv computes Harrell's C-index but is not a torchmetrics ``Metric``; this thin wrapper keeps
risk scores, times and events as concatenated states, so the index is computed once over the
whole evaluation set (not averaged over batches) and synchronised across processes in DDP.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

__all__ = ["ConcordanceIndex", "split_survival_target"]


def split_survival_target(target: Tensor, where: str = "target") -> tuple:
    """Split a ``(B, 2)`` survival target into ``time`` (float) and ``event`` (bool).

    Raises:
        ValueError: on a wrong shape, a negative or non-finite time, or an event flag other than 0/1.
    """
    if target.ndim != 2 or target.shape[1] != 2:
        raise ValueError(f"{where}: expected shape (B, 2) holding (time, event), found {tuple(target.shape)}")
    time, event = target[:, 0], target[:, 1]
    if not time.is_floating_point():
        time = time.float()
    if not torch.isfinite(time).all() or (time < 0).any():
        bad = time[~torch.isfinite(time) | (time < 0)][0].item()
        raise ValueError(f"{where}: survival time expected finite and >= 0, found {bad}")
    if not ((event == 0) | (event == 1)).all():
        bad = event[(event != 0) & (event != 1)][0].item()
        raise ValueError(f"{where}: event flag expected 0 or 1, found {bad}")
    return time, event.bool()


class ConcordanceIndex(Metric):
    """Harrell's concordance index of risk scores against right-censored survival times.

    ``update(preds, target)`` takes risk scores ``(B,)`` (higher = earlier event) and a target
    ``(B, 2)`` of (time, event).  ``compute`` calls torchsurv's ``ConcordanceIndex`` on everything
    seen; it returns NaN (with no error) when the evaluation set holds no comparable pair (no
    observed event, or no event before another sample's time, or a single sample), since the
    index is then undefined.

    Raises:
        ValueError: in ``update``, on mismatched shapes or invalid targets.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.add_state("risk", default=[], dist_reduce_fx="cat")
        self.add_state("time", default=[], dist_reduce_fx="cat")
        self.add_state("event", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        preds = preds.reshape(-1) if preds.ndim == 2 and preds.shape[1] == 1 else preds
        if preds.ndim != 1 or preds.shape[0] != target.shape[0]:
            raise ValueError(f"ConcordanceIndex: preds expected shape ({target.shape[0]},) of risk scores, found {tuple(preds.shape)}")
        time, event = split_survival_target(target, "ConcordanceIndex target")
        self.risk.append(preds.detach() if preds.is_floating_point() else preds.float())
        self.time.append(time)
        self.event.append(event)

    def compute(self) -> Tensor:
        from torchsurv.metrics.cindex import ConcordanceIndex as _TorchsurvCIndex

        risk, time, event = dim_zero_cat(self.risk), dim_zero_cat(self.time), dim_zero_cat(self.event).bool()
        # undefined (NaN) without a comparable pair: one exists iff some event precedes some other time
        if risk.numel() < 2 or not event.any() or not time[event].min() < time.max():
            return torch.tensor(float("nan"), device=risk.device)
        return _TorchsurvCIndex()(risk, event, time).to(risk.device)
