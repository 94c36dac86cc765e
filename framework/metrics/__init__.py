"""Metrics: continual-learning summaries and the task metrics torchmetrics does not have."""
from framework.metrics.continual import format_matrix, summarize
from framework.metrics.survival import ConcordanceIndex, split_survival_target

__all__ = ["summarize", "format_matrix", "ConcordanceIndex", "split_survival_target"]
