"""A new continual metric, "accuracy_spread": the best minus the worst score of the trained tasks after
the latest experience (how unevenly the model keeps its tasks)."""
from __future__ import annotations

import math
from typing import Optional

from framework.metrics import MatrixView, register_metric


@register_metric("accuracy_spread")
def accuracy_spread(view: MatrixView) -> Optional[float]:
    values = [float(view.matrix[view.last, j]) for j in view.learned(view.last) if not math.isnan(view.matrix[view.last, j])]
    return max(values) - min(values) if values else None
