"""Learned router: a small classifier over frozen features, retrained with a replayed feature memory.

Each source keeps ``memory_per_source`` frozen feature vectors of its training images (features,
not images: no patient pixels are kept).  When a source is learned, the classifier (one hidden
layer) is trained again from scratch on the whole memory, every source equally represented: replay
at the level of features, so old sources are not forgotten.  The unknown score is the cosine
distance to the ``neighbours``-th nearest remembered feature (deep nearest neighbours, Sun et al.,
ICML 2022).
"""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from framework.routing.base import TaskRouter, _check_count

__all__ = ["LearnedRouter"]


class LearnedRouter(TaskRouter):
    """A one-hidden-layer classifier of sources, trained on a feature memory.

    Args:
        memory_per_source: remembered feature vectors per source.
        hidden: width of the hidden layer.
        steps: full-batch Adam steps per retraining.
        lr: Adam learning rate.
        neighbours: the k of the k-th-nearest-neighbour unknown score.
        **kwargs: :class:`~framework.routing.base.TaskRouter` options.

    Raises:
        ValueError: naming the option, for a value out of range.
    """

    kind = "learned"

    def __init__(self, backbone, memory_per_source: int = 500, hidden: int = 128, steps: int = 300, lr: float = 0.01,
                 neighbours: int = 5, **kwargs: Any) -> None:
        super().__init__(backbone, **kwargs)
        owner = type(self).__name__
        self.memory_per_source = _check_count(owner, "memory_per_source", memory_per_source, 2)
        self.hidden = _check_count(owner, "hidden", hidden)
        self.steps = _check_count(owner, "steps", steps)
        self.neighbours = _check_count(owner, "neighbours", neighbours)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"{owner}: lr expected a number > 0, found {lr!r}")
        self.lr = float(lr)
        #: source -> (M, E) remembered features
        self.memory: Dict[str, Tensor] = {}
        #: the classifier's weights (w1, b1, w2, b2), rebuilt for every new source
        self.weights: Dict[str, Tensor] = {}

    def _learn(self, source: str, features: Tensor) -> None:
        features = F.normalize(features, dim=-1)
        generator = torch.Generator().manual_seed(self.seed + len(self.sources))
        keep = torch.randperm(features.shape[0], generator=generator)[: self.memory_per_source]
        self.memory[source] = features[keep].clone()
        x = torch.cat([self.memory[s] for s in self.sources])
        y = torch.cat([torch.full((self.memory[s].shape[0],), i, dtype=torch.long) for i, s in enumerate(self.sources)])
        counts = torch.bincount(y, minlength=len(self.sources)).float()
        layers = torch.nn.Sequential(torch.nn.Linear(x.shape[1], self.hidden), torch.nn.ReLU(), torch.nn.Linear(self.hidden, len(self.sources)))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for layer in (layers[0], layers[2]):
                layer.reset_parameters()
        optimizer = torch.optim.Adam(layers.parameters(), lr=self.lr, weight_decay=1e-4)
        weight = counts.sum() / (len(self.sources) * counts)  # every source weighs the same
        with torch.enable_grad():
            for _ in range(self.steps):
                optimizer.zero_grad()
                F.cross_entropy(layers(x), y, weight=weight).backward()
                optimizer.step()
        self.weights = {"w1": layers[0].weight.detach().clone(), "b1": layers[0].bias.detach().clone(),
                        "w2": layers[2].weight.detach().clone(), "b2": layers[2].bias.detach().clone()}

    def scores(self, features: Tensor) -> Dict[str, Tensor]:
        features = F.normalize(features, dim=-1)
        w = {k: v.to(features.device) for k, v in self.weights.items()}
        logits = F.linear(F.relu(F.linear(features, w["w1"], w["b1"])), w["w2"], w["b2"])
        memory = torch.cat([self.memory[s] for s in self.sources]).to(features.device)
        k = min(self.neighbours, memory.shape[0])
        kth = (features @ memory.T).topk(k, dim=-1).values[:, -1]
        return {"logits": logits, "unknown_score": 1.0 - kth}

    def _kind_state(self) -> Dict[str, Any]:
        return {"memory": {s: m.clone() for s, m in self.memory.items()}, "weights": {k: v.clone() for k, v in self.weights.items()}}

    def _load_kind_state(self, state: Mapping[str, Any]) -> None:
        self.memory = {s: torch.as_tensor(m, dtype=torch.float32) for s, m in state["memory"].items()}
        self.weights = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in state["weights"].items()}
