"""The report writers of :class:`~framework.callbacks.ContinualEvaluation`: every output of a continual
evaluation result, as pure functions of the result dict (plus the logger state of W&B's axis).

* :mod:`~framework.callbacks.reports.tables`: labels, the JSON undefined-metric convention, the printed report;
* :mod:`~framework.callbacks.reports.files`: ``continual_metrics.{json,csv}``, the heat map and the task curves;
* :mod:`~framework.callbacks.reports.loggers`: scalars to every Lightning logger, tables and images to W&B.
"""
from framework.callbacks.reports.files import (
    CURVES_PNG, METRICS_CSV, METRICS_JSON, METRICS_PNG, csv_columns, plot_curves, plot_matrix, write_csv, write_json, write_result_files,
)
from framework.callbacks.reports.loggers import LoggerReport, experience_metrics, log_wandb_media
from framework.callbacks.reports.tables import (
    INITIAL_ROW, SECONDARY_METRICS, UNDEFINED_NOTE, average_label, column_labels, format_report, json_ready, pending_mask,
    print_report, restore_undefined, row_label,
)

__all__ = [
    "CURVES_PNG", "METRICS_CSV", "METRICS_JSON", "METRICS_PNG", "csv_columns", "plot_curves", "plot_matrix", "write_csv", "write_json",
    "write_result_files", "LoggerReport", "experience_metrics", "log_wandb_media", "INITIAL_ROW", "SECONDARY_METRICS",
    "UNDEFINED_NOTE", "average_label", "column_labels", "format_report", "json_ready", "pending_mask", "print_report",
    "restore_undefined", "row_label",
]
