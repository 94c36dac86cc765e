"""AUROC that is undefined (``NaN``), never 0, where a class lacks positives or negatives.

torchmetrics' macro ``MulticlassAUROC`` scores a class absent from the test set as 0 (and a test
split of one class as 0.0000), so a silent 0 enters the averages.  :class:`DefinedAUROC` averages
over the classes whose AUROC is defined and is ``NaN`` when none is; with every class present it
equals torchmetrics' (``tests/test_reliability_framework.py``).
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from torch import Tensor
from torchmetrics import Metric
from torchmetrics.functional.classification import binary_auroc
from torchmetrics.utilities import dim_zero_cat

__all__ = ["DefinedAUROC", "defined_auroc"]


def defined_auroc(scores: Tensor, target: Tensor, multilabel: bool = False) -> Tuple[float, int]:
    """Macro one-vs-rest AUROC over the classes where it is defined, and how many classes that is.

    A class's AUROC is defined when the samples hold both positives and negatives of it (for
    single-label ``target`` of class indices: the class occurs, and not alone).  Undefined classes
    are skipped, never counted as 0; with none defined (e.g. every sample of one class) the value is
    ``NaN``.  With every class defined this equals torchmetrics' and scikit-learn's macro OvR AUROC.

    Args:
        scores: ``(N, C)`` per-class scores (probabilities).
        target: ``(N,)`` class indices, or ``(N, C)`` 0/1 labels when ``multilabel``.
        multilabel: whether ``target`` holds one 0/1 column per class.
    """
    scores = scores.float()
    values = []
    for c in range(scores.shape[1]):
        positive = (target[:, c] if multilabel else target == c).long()
        if 0 < int(positive.sum()) < len(positive):
            values.append(float(binary_auroc(scores[:, c], positive)))
    return (float(np.mean(values)) if values else float("nan")), len(values)


class DefinedAUROC(Metric):
    """Macro one-vs-rest AUROC that is ``NaN`` where undefined (see :func:`defined_auroc`).

    Stores the scores and targets (gathered across DDP ranks in ``compute``), as torchmetrics'
    exact (``thresholds=None``) AUROC does.  Scores outside ``[0, 1]`` are softmaxed
    (``sigmoid`` for multi-label) per batch, as torchmetrics does.

    Args:
        num_classes: the number of classes (columns of the scores).
        multilabel: targets are ``(N, C)`` 0/1 labels instead of class indices.
    """

    full_state_update = False

    def __init__(self, num_classes: int, multilabel: bool = False) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.multilabel = bool(multilabel)
        self.add_state("scores", default=[], dist_reduce_fx="cat")
        self.add_state("target", default=[], dist_reduce_fx="cat")

    def update(self, preds: Tensor, target: Tensor) -> None:
        preds = preds.detach().float()
        if not bool(((preds >= 0) & (preds <= 1)).all()):
            preds = preds.sigmoid() if self.multilabel else preds.softmax(dim=1)
        self.scores.append(preds)
        self.target.append(target.detach().long())

    def compute(self) -> Tensor:
        # a list of batches on one process, one concatenated tensor after a DDP sync
        if isinstance(self.scores, list) and not self.scores:
            return torch.tensor(float("nan"))
        value, _ = defined_auroc(dim_zero_cat(self.scores), dim_zero_cat(self.target), self.multilabel)
        return torch.tensor(value)
