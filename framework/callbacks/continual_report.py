"""How a continual evaluation result is shown: tables, CSV rows, the heat map and per-task curves.

The writers live in :mod:`framework.callbacks.reports` (``tables``: labels, JSON and the printed
report; ``files``: the CSV and both plots); this module keeps their earlier import path.
"""
from framework.callbacks.reports.files import csv_columns, plot_curves, plot_matrix, write_csv
from framework.callbacks.reports.tables import (
    INITIAL_ROW, SECONDARY_METRICS, UNDEFINED_NOTE, average_label, column_labels, format_report, json_ready, pending_mask,
    restore_undefined, row_label,
)

__all__ = [
    "INITIAL_ROW", "row_label", "average_label", "column_labels", "pending_mask", "format_report",
    "write_csv", "plot_matrix", "plot_curves", "SECONDARY_METRICS", "json_ready", "restore_undefined", "UNDEFINED_NOTE",
    "csv_columns",
]
