"""``medcl predict`` without a task: route each image, then predict every task of its source."""
from __future__ import annotations

from typing import Any, Dict, Mapping

import torch
from torch import nn

__all__ = ["predict_routed"]


@torch.no_grad()
def predict_routed(model: nn.Module, batch: Mapping[str, Any]) -> Dict[str, Any]:
    """The routing verdict of each image of ``batch`` and the predictions of the tasks it routes to.

    Args:
        model: a :class:`~framework.model.MedCLModel` with a task router.
        batch: ``{"image": router views, "views": {task: that task's views}, "id": [...]}``
            (:class:`data_modules.routed_prediction.RoutedPredictionSource`, one image per batch).

    Returns:
        ``{"id", "source" (a name or "unknown"), "confidence", "unknown_score", "tasks": {task: head.predict(...)}}``;
        an image called unknown gets no task predictions, and a task whose view the image has no
        channels or dimensionality for is left out.
    """
    router = model.router
    routes = router(batch["image"])
    (name,) = routes.names()
    tasks: Dict[str, Dict[str, torch.Tensor]] = {}
    if name in router.tasks_of:
        for task in router.tasks_of[name]:
            view = batch["views"].get(task)
            if view is not None and task in model.heads:
                tasks[task] = dict(model.head(task).predict(model(view, task)))
    return {
        "id": list(batch["id"]), "source": [name], "confidence": routes.confidence.float().cpu(),
        "unknown_score": routes.unknown_score.float().cpu(), "tasks": tasks,
    }
