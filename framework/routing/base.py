"""A task router: which image source an image comes from, or "unknown".

The router is part of the model (``model.router``): it is stored in checkpoints, grows with every
image source the stream teaches (``learn``) and answers, for a batch of images, the source of each
(every task of that source then applies), a confidence, and an *unknown score* (higher: farther from
everything learned).  An image whose unknown score is above its nearest source's threshold,
calibrated on that source's validation images when it was learned (:meth:`TaskRouter.learn`), gets
the verdict "unknown" instead of a forced head.

Two kinds ship (:data:`ROUTER_KINDS`): :class:`~framework.routing.prototypes.PrototypeRouter`
(K-means prototypes of frozen features, S-Prompts style) and
:class:`~framework.routing.learned.LearnedRouter` (a small classifier retrained on a replayed
feature memory).  The state a kind learns lives in plain tensors and lists, stored with the model
through ``get_extra_state`` (no pickled objects: checkpoints stay weights-only loadable).
"""
from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping

import torch
from torch import Tensor, nn

from framework.routing.features import FrozenImageFeatures

__all__ = ["TaskRouter", "Routes", "UNKNOWN"]

#: the verdict for an image far from every learned source
UNKNOWN = "unknown"


@dataclass
class Routes:
    """The router's answer for a batch.

    Attributes:
        source: ``(B,)`` index into ``sources`` of the nearest source (also for unknown images).
        confidence: ``(B,)`` the router's confidence in that source, in ``[0, 1]``.
        unknown_score: ``(B,)`` higher: farther from every learned source.
        unknown: ``(B,)`` bool, the unknown score is above the nearest source's threshold.
        sources: the source names, in the order they were learned.
    """

    source: Tensor
    confidence: Tensor
    unknown_score: Tensor
    unknown: Tensor
    sources: List[str]

    def names(self) -> List[str]:
        """Per image: its source's name, or ``"unknown"``."""
        return [UNKNOWN if u else self.sources[int(s)] for s, u in zip(self.source.tolist(), self.unknown.tolist())]


def _check_fraction(owner: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.5 <= float(value) < 1.0:
        raise ValueError(f"{owner}: {name} expected a number in [0.5, 1), found {value!r}")
    return float(value)


def _check_count(owner: str, name: str, value: Any, low: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{owner}: {name} expected an integer >= {low}, found {value!r}")
    return value


class TaskRouter(nn.Module):
    """Base class of the router kinds.

    Args:
        backbone: the model's backbone (the router copies its image tower, see :class:`FrozenImageFeatures`).
        unknown_quantile: the share of a source's validation images that must *not* be called
            unknown; its threshold is that quantile of their unknown scores (0.99: about 1 % of
            in-distribution images are called unknown).
        samples_per_source: at most this many training images of a source are encoded to learn it
            (drawn with ``seed``).
        seed: seeds the sample draw and the kind's own fitting.
        features: what the router reads from its frozen tower: ``"layers"`` (statistics of several
            blocks' feature maps) or ``"pooled"`` (the pooled embedding); see :mod:`framework.routing.features`.

    Raises:
        ValueError: naming the option, for a value out of range.
    """

    kind: str = ""

    def __init__(
        self, backbone: nn.Module, unknown_quantile: float = 0.99, samples_per_source: int = 2000, seed: int = 0, features: str = "layers",
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        self.unknown_quantile = _check_fraction(owner, "unknown_quantile", unknown_quantile)
        self.samples_per_source = _check_count(owner, "samples_per_source", samples_per_source, 2)
        self.seed = _check_count(owner, "seed", seed, 0)
        self.features = FrozenImageFeatures(backbone, features)
        #: learned sources, in order
        self.sources: List[str] = []
        #: source -> its tasks, in the order they were added
        self.tasks_of: Dict[str, List[str]] = {}
        #: source -> unknown-score threshold, calibrated on the source's validation images when it is learned
        self.thresholds: Dict[str, float] = {}
        #: the features copy holds the run's starting weights (see :meth:`snapshot`)
        self.snapshot_taken = False

    # ------------------------------------------------------------------ growth
    def snapshot(self, backbone: nn.Module) -> None:
        """Copy ``backbone``'s image-tower weights once, when the run's starting weights are settled."""
        if not self.snapshot_taken:
            self.features.copy_from(backbone)
            self.snapshot_taken = True

    def add_task(self, task: str, source: str) -> None:
        """Record that ``task`` reads images of ``source`` (learned with :meth:`learn`)."""
        tasks = self.tasks_of.setdefault(source, [])
        if task not in tasks:
            tasks.append(task)

    def learn(self, source: str, features: Tensor, calibration: Tensor) -> float:
        """Learn (or re-learn) ``source`` from the frozen features of its training images, then set
        its unknown threshold from the features of its validation images: the ``unknown_quantile``
        of their unknown scores.  Only the source's own data is read, when it is learned (no old
        source's data is needed later: a new source only adds prototypes or memory, so an old
        source's images never look more unknown than when it was calibrated).

        Returns:
            the source's threshold.

        Raises:
            ValueError: if ``features`` or ``calibration`` is not ``(N, embed_dim)`` with N >= 2.
        """
        for name, value in (("training", features), ("validation", calibration)):
            if value.ndim != 2 or value.shape[0] < 2:
                raise ValueError(
                    f"{type(self).__name__}: source {source!r} expected at least 2 {name} feature vectors (N, E), found {tuple(value.shape)}"
                )
        if source not in self.sources:
            self.sources.append(source)
        self._learn(source, features.detach().float().cpu())
        scores = self.scores(calibration.detach().float().cpu())["unknown_score"]
        self.thresholds[source] = float(torch.quantile(scores, self.unknown_quantile))
        return self.thresholds[source]

    @abstractmethod
    def _learn(self, source: str, features: Tensor) -> None:
        """The kind's own fitting of ``source`` (features on the CPU, as :attr:`features` gives them)."""

    # ------------------------------------------------------------------ inference
    @abstractmethod
    def scores(self, features: Tensor) -> Dict[str, Tensor]:
        """``{"logits": (B, S), "unknown_score": (B,)}`` for features ``(B, E)``; logits rank the sources."""

    @torch.no_grad()
    def route_features(self, features: Tensor) -> Routes:
        """Routes of images given their frozen features (``self.features(images)``).

        Raises:
            RuntimeError: if no source was learned yet.
        """
        if not self.sources:
            raise RuntimeError(f"{type(self).__name__}: no image source learned yet; the router learns one at the end of each experience")
        out = self.scores(features.float())
        probs = out["logits"].softmax(dim=-1)
        confidence, source = probs.max(dim=-1)
        unknown_score = out["unknown_score"]
        thresholds = torch.tensor([self.thresholds[s] for s in self.sources], device=unknown_score.device)
        unknown = unknown_score > thresholds[source]
        return Routes(source=source, confidence=confidence, unknown_score=unknown_score, unknown=unknown, sources=list(self.sources))

    def forward(self, images: Tensor) -> Routes:
        """Route a batch of images (``(B, C, H, W)`` or volumes ``(B, C, D, H, W)``)."""
        return self.route_features(self.features(images))

    # ------------------------------------------------------------------ checkpoints
    def _kind_state(self) -> Dict[str, Any]:
        return {}

    def _load_kind_state(self, state: Mapping[str, Any]) -> None:
        pass

    def get_extra_state(self) -> Dict[str, Any]:
        return {
            "kind": self.kind, "features": self.features.kind, "sources": list(self.sources), "tasks_of": {s: list(t) for s, t in self.tasks_of.items()},
            "thresholds": dict(self.thresholds), "snapshot_taken": self.snapshot_taken, "state": self._kind_state(),
        }

    def set_extra_state(self, state: Mapping[str, Any]) -> None:
        if state.get("kind") != self.kind or state.get("features", "layers") != self.features.kind:
            raise ValueError(
                f"{type(self).__name__}: the checkpoint's router is of kind {state.get('kind')!r} reading {state.get('features')!r} features, "
                f"this model's is {self.kind!r} reading {self.features.kind!r}"
            )
        self.sources = list(state["sources"])
        self.tasks_of = {s: list(t) for s, t in state["tasks_of"].items()}
        self.thresholds = {s: float(t) for s, t in state["thresholds"].items()}
        self.snapshot_taken = bool(state["snapshot_taken"])
        self._load_kind_state(state["state"])

    def describe(self) -> str:
        thresholds = ", ".join(f"{s} {t:.4f}" for s, t in self.thresholds.items())
        return f"{type(self).__name__}: sources {self.sources}, unknown thresholds ({self.unknown_quantile} quantile): {thresholds or 'none yet'}"
