"""Metrics: continual-learning summaries (open: :func:`register_metric`) and the task metrics torchmetrics does not have."""
from framework.core.registry import METRICS
from framework.metrics.continual import MatrixView, compute_metrics, format_matrix, register_metric, summarize
from framework.metrics.survival import ConcordanceIndex, split_survival_target

__all__ = ["summarize", "format_matrix", "ConcordanceIndex", "split_survival_target", "METRICS", "MatrixView", "register_metric", "compute_metrics"]
