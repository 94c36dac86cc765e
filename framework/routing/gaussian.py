"""Gaussian router: each source is a Gaussian of frozen features; Mahalanobis distances route and say "unknown".

Lee et al. (NeurIPS 2018) detect out-of-distribution inputs by the Mahalanobis distance of their
features to class-conditional Gaussians.  Here every image source is one Gaussian (its training
features' mean and covariance, with a small shrinkage towards a scaled identity):

* an image is routed to the source of the smallest Mahalanobis distance under the covariance
  pooled over the sources (linear discriminant analysis: sources are compared on one scale);
* its unknown score is the smallest Mahalanobis distance under each source's *own* covariance
  (a source whose images vary little calls a small departure unknown, a varied one does not).

Stored per source: the mean, the scatter matrix and the count (``embed_dim``\\ :sup:`2` numbers per
source, 4 MiB for 1,024-dimensional features); the precisions are recomputed when a source is
learned or a checkpoint loads.  No image and no feature vector is kept.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import Tensor

from framework.routing.base import TaskRouter

__all__ = ["GaussianRouter"]


class GaussianRouter(TaskRouter):
    """Class-conditional Gaussians of frozen features, Mahalanobis distances.

    Args:
        shrinkage: weight of the scaled identity mixed into every covariance (``(1 - s) C + s tr(C)/D I``).
        **kwargs: :class:`~framework.routing.base.TaskRouter` options.

    Raises:
        ValueError: naming the option, for a value out of range.
    """

    kind = "gaussian"

    def __init__(self, backbone, shrinkage: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0 < shrinkage < 1:
            raise ValueError(f"GaussianRouter: shrinkage expected a number in (0, 1), found {shrinkage!r}")
        self.shrinkage = float(shrinkage)
        #: source -> mean (D,), scatter (D, D) about that mean, count
        self.means: Dict[str, Tensor] = {}
        self.scatters: Dict[str, Tensor] = {}
        self.counts: Dict[str, int] = {}
        self._precisions: Dict[str, Tensor] = {}
        self._shared: Tensor = torch.empty(0)

    def _precision(self, covariance: Tensor) -> Tensor:
        d = covariance.shape[0]
        shrunk = (1 - self.shrinkage) * covariance + self.shrinkage * covariance.diagonal().mean() * torch.eye(d, dtype=covariance.dtype)
        return torch.linalg.inv(shrunk)

    def _refresh(self) -> None:
        self._precisions = {s: self._precision(self.scatters[s].double() / self.counts[s]).float() for s in self.sources}
        pooled = sum(self.scatters[s].double() for s in self.sources) / sum(self.counts[s] for s in self.sources)
        self._shared = self._precision(pooled).float()

    def _learn(self, source: str, features: Tensor) -> None:
        x = features.double()
        mean = x.mean(dim=0)
        centred = x - mean
        self.means[source] = mean.float()
        self.scatters[source] = (centred.T @ centred).float()  # as stored: a restored router computes the same precisions
        self.counts[source] = int(x.shape[0])
        self._refresh()

    @staticmethod
    def _distance(features: Tensor, mean: Tensor, precision: Tensor) -> Tensor:
        diff = features - mean
        return ((diff @ precision) * diff).sum(dim=-1)

    def scores(self, features: Tensor) -> Dict[str, Tensor]:
        device = features.device
        shared = self._shared.to(device)
        routing = torch.stack([self._distance(features, self.means[s].to(device), shared) for s in self.sources], dim=-1)
        own = torch.stack([self._distance(features, self.means[s].to(device), self._precisions[s].to(device)) for s in self.sources], dim=-1)
        return {"logits": -0.5 * routing, "unknown_score": own.min(dim=-1).values}

    def _kind_state(self) -> Dict[str, Any]:
        return {"means": dict(self.means), "scatters": {s: m.clone() for s, m in self.scatters.items()}, "counts": dict(self.counts)}

    def _load_kind_state(self, state: Mapping[str, Any]) -> None:
        self.means = {s: torch.as_tensor(m, dtype=torch.float32) for s, m in state["means"].items()}
        self.scatters = {s: torch.as_tensor(m, dtype=torch.float32) for s, m in state["scatters"].items()}
        self.counts = {s: int(c) for s, c in state["counts"].items()}
        if self.sources:
            self._refresh()
