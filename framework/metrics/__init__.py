"""Continual-learning metrics (per-task metrics come from torchmetrics via each head)."""
from framework.metrics.continual import format_matrix, summarize

__all__ = ["summarize", "format_matrix"]
