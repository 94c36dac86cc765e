"""How a continual evaluation result reaches the trainer's loggers: one row of scalars per experience
against a ``continual/experience`` axis (every logger), and for W&B also the matrix and cross-task
tables, both metric images and, opt-in, sample test images (:class:`LoggerReport`)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Optional

from pytorch_lightning.loggers import WandbLogger

from framework.callbacks.reports.files import CURVES_PNG, METRICS_PNG
from framework.callbacks.reports.tables import column_labels, row_label
from framework.callbacks.reports.task_agnostic import task_agnostic_metrics

__all__ = ["LoggerReport", "experience_metrics", "log_wandb_media"]


def experience_metrics(experience: int, row: Dict[str, Dict[str, float]], result: Dict[str, Any]) -> Dict[str, float]:
    """The scalars logged after ``experience``: every task's metrics in ``row``, the latest
    cross-domain, cross-task and zero-shot-retention scores and the summary of ``result``."""
    metrics: Dict[str, float] = {"continual/experience": experience}
    for task, values in row.items():
        for name, value in values.items():
            metrics[f"continual/{task}/{name}"] = value
    for name, entry in result.get("cross_domain", {}).items():
        if entry["scores"][-1] is not None:
            metrics[f"continual/cross_domain/{name}/{entry['metric']}"] = entry["scores"][-1]
    for name, entry in result.get("cross_task", {}).items():
        for kind in ("zero_shot", "linear_probe"):
            if entry[kind][-1] is not None:
                metrics[f"continual/cross_task/{name}/{kind}"] = entry[kind][-1]
    for key in ("average_accuracy", "forgetting", "bwt", "fwt"):
        if result.get(key) is not None:
            metrics[f"continual/{key}"] = result[key]
    for key, values in result.get("metrics_per_experience", {}).items():  # registered metrics (framework/metrics/continual.py)
        if values and values[-1] is not None:
            metrics[f"continual/{key}"] = values[-1]
    retention = result.get("zero_shot_retention") or {}
    for name, scores in retention.get("scores", {}).items():
        if scores and scores[-1] is not None:
            metrics[f"continual/zero_shot_retention/{name}"] = scores[-1]
    for key in ("transfer", "drop"):
        if retention.get(key) is not None:
            metrics[f"continual/zero_shot_retention/{key}"] = retention[key]
    metrics.update(task_agnostic_metrics(result.get("task_agnostic")))
    return metrics


class LoggerReport:
    """Sends each experience's result to every logger of a trainer; W&B gets its own experience axis
    (defined once per instance) and, on rank 0, tables and images."""

    def __init__(self) -> None:
        self.wandb_defined = False

    def log(
        self,
        trainer,
        experience: int,
        row: Dict[str, Dict[str, float]],
        result: Optional[Dict[str, Any]],
        run_dir: Optional[Path],
        sample_images: Optional[Callable[[], Dict[str, Any]]] = None,
    ) -> None:
        """Log the row of ``experience`` to ``trainer.loggers``.

        Args:
            trainer: the trainer (its ``loggers``, ``global_step``, ``is_global_zero``).
            experience: the experience just evaluated.
            row: task -> metrics of that experience.
            result: the whole result so far (summary, cross-domain, cross-task, retention).
            run_dir: the folder holding the written plots (``None``: no images).
            sample_images: called for extra W&B media (sample test images), or ``None``.
        """
        metrics = experience_metrics(experience, row, result or {})
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and not self.wandb_defined:
                # Per-experience metrics get their own x-axis instead of W&B's monotonic step.
                logger.experiment.define_metric("continual/experience")
                logger.experiment.define_metric("continual/*", step_metric="continual/experience")
                self.wandb_defined = True
            logger.log_metrics(metrics, step=trainer.global_step)
            if isinstance(logger, WandbLogger) and trainer.is_global_zero:
                log_wandb_media(logger, result, experience, run_dir, sample_images)
            logger.save()


def log_wandb_media(
    logger: WandbLogger, result: Dict[str, Any], experience: int, run_dir: Optional[Path],
    sample_images: Optional[Callable[[], Dict[str, Any]]] = None,
) -> None:
    """The matrix as a table and both images, against the experience axis."""
    import wandb

    rows = [[row_label(e), *r] for e, r in zip(result["experiences"], result["accuracy_matrix"])]
    payload: Dict[str, Any] = {
        "continual/experience": experience,
        "continual/accuracy_matrix": wandb.Table(columns=["row", *column_labels(result)], data=rows),
    }
    if result["cross_task"]:
        columns = ["row", *[f"{n}:{k}" for n in result["cross_task"] for k in ("zero_shot", "linear_probe")]]
        data = [[row_label(e), *[entry[k][i] for entry in result["cross_task"].values() for k in ("zero_shot", "linear_probe")]] for i, e in enumerate(result["experiences"])]
        payload["continual/cross_task"] = wandb.Table(columns=columns, data=data)
    for key, name in (("continual/heatmap", METRICS_PNG), ("continual/task_curves", CURVES_PNG)):
        png = run_dir / name if run_dir is not None else None
        if png is not None and png.is_file():
            payload[key] = wandb.Image(str(png))
    if sample_images is not None:  # opt-in: test images are patient data
        payload.update(sample_images())
    logger.experiment.log(payload)
