"""Evaluation without task labels: route every test image, then predict; a wrong route is wrong.

The task-aware matrix hands each test set to its own head.  A general-purpose model is handed an
image, not a task, so this evaluation (LifeLonger's "cross-domain incremental" setting, Derakhshani
et al. 2022) lets the model's task router (:mod:`framework.routing`) decide:

* **routing accuracy** of a source: the share of its test images routed to it (an image called
  "unknown" is a wrong route); each image counts once, however many tasks its source has;
* **task-agnostic score** of a task: its head's primary score (accuracy, Dice, C-index) where an
  image routed elsewhere or called unknown gets the head's ``unrouted_outputs`` (a wrong class, no
  mask, an uninformative risk), and their average over the learned tasks;
* **unknown rate** of a source: the share of its test images called unknown;
* **one head over the union of classes** (no router; LifeLonger's single-head baseline): for the
  classification tasks, the logits of every learned classification head are concatenated into one
  softmax over the union of their classes (each block through its own modality's adapters), and an
  image is right only if the arg-max is its own task's true class.  MedCL's classification heads
  are CLIP-style (cosine similarity to one embedding per class, times a learned scale), so this
  *is* a single head over the union whose rows were trained experience by experience;
* **out-of-distribution AUROC** of each never-learned domain (``DomainStream(unknown_domains=...)``):
  how well the router's unknown score separates its test images (positives) from the learned
  sources' test images (negatives), and the share of them called unknown.

Each test image is counted once across DDP ranks (the loaders are sharded, the torchmetrics states
synchronised in ``compute()``).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Dict, Sequence

import torch
from pytorch_lightning.utilities import move_data_to_device
from torch import nn
from torchmetrics import CatMetric, MeanMetric

from framework.metrics.evaluation import shard_loader

__all__ = ["evaluate_task_agnostic"]

log = logging.getLogger(__name__)


def _auroc(positives: torch.Tensor, negatives: torch.Tensor) -> float:
    """AUROC of scores where higher means positive (scikit-learn, in float64).

    Not torchmetrics' ``BinaryAUROC``: it passes scores outside ``[0, 1]`` through a sigmoid, which
    saturates for the unbounded unknown scores (Mahalanobis distances in the thousands) and ties them all.
    """
    from sklearn.metrics import roc_auc_score

    if positives.numel() == 0 or negatives.numel() == 0:
        return math.nan
    labels = torch.cat([torch.ones(positives.numel()), torch.zeros(negatives.numel())]).numpy()
    return float(roc_auc_score(labels, torch.cat([positives.double(), negatives.double()]).numpy()))


def _mean(value: MeanMetric) -> float:
    return float(value.compute()) if value.update_count else math.nan


@torch.no_grad()
def evaluate_task_agnostic(
    model: nn.Module, datamodule: Any, tasks: Sequence[str], split: str, device: torch.device, unknown_domains: Sequence[str] = ()
) -> Dict[str, Any]:
    """Routing accuracy, task-agnostic scores and out-of-distribution AUROC of ``model`` (which has a router).

    Args:
        model: a :class:`~framework.model.MedCLModel` with a ``router``.
        datamodule: serves ``eval_dataloader(task, split)`` (a :class:`~data_modules.DomainStream`).
        tasks: the tasks to score (trained ones); a task whose source the router has not learned is skipped.
        split: ``"test"`` or ``"val"``.
        device: where the model runs.
        unknown_domains: names of never-learned domains in ``datamodule`` (their labels are not read).

    Returns:
        ``{"routing_accuracy": {source: v}, "unknown_rate": {source: v}, "scores": {task: v},
        "average": v, "ood": {domain: {"auroc": v, "unknown_rate": v}}}``; NaN where undefined.
    """
    router = model.router
    routing: Dict[str, MeanMetric] = {}
    unknown: Dict[str, MeanMetric] = {}
    scores: Dict[str, float] = {}
    known_scores = CatMetric().to(device)  # gathered across DDP ranks in compute()
    union_tasks = [t for t in tasks if model.specs[t].kind == "classification" and model.specs[t].source in router.sources]
    union: Dict[str, MeanMetric] = {}
    for task in tasks:
        spec = model.specs[task]
        source = spec.source
        if source not in router.sources:
            continue
        index = router.sources.index(source)
        head = model.head(task)
        first = source not in routing  # each image counts once for its source's routing accuracy
        if first:
            routing[source], unknown[source] = MeanMetric().to(device), MeanMetric().to(device)
        metrics = head.make_metrics().to(device)
        defined = True
        for batch in shard_loader(datamodule.eval_dataloader(task, split)):
            sub = move_data_to_device(batch[task], device)
            images, target = sub["image"], sub["target"]
            routes = router(images)
            right = (routes.source == index) & ~routes.unknown
            if first:
                routing[source].update(right.float())
                unknown[source].update(routes.unknown.float())
                known_scores.update(routes.unknown_score.double())
            with model.route(spec):
                outputs = head(model.backbone, images).float()
            try:
                wrong = head.unrouted_outputs(outputs, target)
            except NotImplementedError as err:
                if defined:
                    log.warning("task-agnostic score of %s not reported: %s", task, err)
                defined = False
                continue
            merged = torch.where(right.view(-1, *([1] * (outputs.ndim - 1))), outputs, wrong)
            metrics.update(**head.metric_inputs(merged, target))
            if task in union_tasks and len(union_tasks) > 1:
                union.setdefault(task, MeanMetric().to(device)).update(_union_correct(model, union_tasks, task, images, target).float())
        scores[task] = float(metrics.compute()[head.score_name]) if defined else math.nan
    ood: Dict[str, Dict[str, float]] = {}
    known = known_scores.compute().flatten().cpu() if known_scores.update_count else torch.empty(0, dtype=torch.float64)
    for name in unknown_domains:
        never_learned, called = CatMetric().to(device), MeanMetric().to(device)
        for batch in shard_loader(datamodule.eval_dataloader(name, split)):
            routes = router(move_data_to_device(batch[name]["image"], device))
            never_learned.update(routes.unknown_score.double())
            called.update(routes.unknown.float())
        positives = never_learned.compute().flatten().cpu() if never_learned.update_count else torch.empty(0, dtype=torch.float64)
        ood[name] = {"auroc": _auroc(positives, known), "unknown_rate": _mean(called)}
    finite = [v for v in scores.values() if not math.isnan(v)]
    return {
        "routing_accuracy": {s: _mean(m) for s, m in routing.items()},
        "unknown_rate": {s: _mean(m) for s, m in unknown.items()},
        "scores": scores,
        "average": sum(finite) / len(finite) if finite else math.nan,
        "ood": ood,
        "union_head": {"scores": {t: _mean(m) for t, m in union.items()},
                       "average": sum(_mean(m) for m in union.values()) / len(union) if union else math.nan},
    }


def _union_correct(model: nn.Module, union_tasks: Sequence[str], task: str, images: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Whether the arg-max over the concatenated logits of every head in ``union_tasks`` is ``task``'s true class."""
    blocks, offset = [], 0
    for other in union_tasks:
        spec = model.specs[other]
        channels = images.shape[1]
        readable = images.ndim == spec.spatial_dims + 2 and (spec.in_channels == channels or (spec.in_channels in (1, 3) and channels in (1, 3)))
        if not readable:
            blocks.append(torch.full((images.shape[0], spec.num_classes), -math.inf, device=images.device))  # cannot read these images
        else:
            with model.route(spec):
                blocks.append(model.head(other)(model.backbone, images).float())
        if other == task:
            offset = sum(b.shape[1] for b in blocks[:-1])
    return torch.cat(blocks, dim=1).argmax(dim=1) == target.long().view(-1) + offset

