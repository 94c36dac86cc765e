"""Prototype router: K-means prototypes of each source's frozen features (S-Prompts style).

Wang et al. (S-Prompts, NeurIPS 2022) identify the domain of a test image by its nearest K-means
centre among the centres of every learned domain, in the feature space of a frozen pretrained
backbone.  Here: ``prototypes_per_source`` centres per source (scikit-learn's ``KMeans``), cosine
similarity, a source's logit is its best centre's similarity divided by ``temperature``, and the
unknown score is ``1 -`` the best similarity over all centres (the distance to the nearest prototype).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import Tensor

from framework.routing.base import TaskRouter, _check_count

__all__ = ["PrototypeRouter"]


class PrototypeRouter(TaskRouter):
    """Nearest K-means prototype of frozen features.

    Args:
        prototypes_per_source: K-means centres per source (fewer if a source has fewer images).
        temperature: divides the similarities into logits (only the confidence depends on it).
        **kwargs: :class:`~framework.routing.base.TaskRouter` options.

    Raises:
        ValueError: naming the option, for a value out of range.
    """

    kind = "prototypes"

    def __init__(self, backbone, prototypes_per_source: int = 10, temperature: float = 0.05, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        self.prototypes_per_source = _check_count(type(self).__name__, "prototypes_per_source", prototypes_per_source)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"PrototypeRouter: temperature expected a number > 0, found {temperature!r}")
        self.temperature = float(temperature)
        #: source -> (K, E) unit-norm centres
        self.prototypes: Dict[str, Tensor] = {}

    def _learn(self, source: str, features: Tensor) -> None:
        from sklearn.cluster import KMeans

        features = torch.nn.functional.normalize(features, dim=-1)
        k = min(self.prototypes_per_source, features.shape[0])
        kmeans = KMeans(n_clusters=k, n_init=3, random_state=self.seed).fit(features.numpy())
        centres = torch.as_tensor(kmeans.cluster_centers_, dtype=torch.float32)
        self.prototypes[source] = torch.nn.functional.normalize(centres, dim=-1)

    def scores(self, features: Tensor) -> Dict[str, Tensor]:
        device = features.device
        features = torch.nn.functional.normalize(features, dim=-1)
        best = torch.stack([(features @ self.prototypes[s].to(device).T).max(dim=-1).values for s in self.sources], dim=-1)
        return {"logits": best / self.temperature, "unknown_score": 1.0 - best.max(dim=-1).values}

    def _kind_state(self) -> Dict[str, Any]:
        return {"prototypes": {s: p.clone() for s, p in self.prototypes.items()}}

    def _load_kind_state(self, state: Mapping[str, Any]) -> None:
        self.prototypes = {s: torch.as_tensor(p, dtype=torch.float32) for s, p in state["prototypes"].items()}
