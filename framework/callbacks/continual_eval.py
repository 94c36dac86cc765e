"""After each experience, test every domain and keep the accuracy matrix."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytorch_lightning as pl
from pytorch_lightning.loggers import WandbLogger
from pytorch_lightning.utilities import rank_zero_only
from tqdm.auto import tqdm

from framework.heads import HEAD_REGISTRY
from framework.metrics.continual import format_matrix, summarize

__all__ = ["ContinualEvaluation", "METRICS_JSON", "METRICS_CSV", "METRICS_PNG"]

log = logging.getLogger(__name__)

METRICS_JSON = "continual_metrics.json"
METRICS_CSV = "continual_metrics.csv"
METRICS_PNG = "accuracy_matrix.png"
#: experience index of the row evaluated before training a model loaded with ``init_from``
INITIAL_ROW = -1


class ContinualEvaluation(pl.Callback):
    """Evaluate every task of the stream at the end of each experience.

    Produces the accuracy matrix ``R[i][j]`` (row = after experience ``i``, column = task ``j``;
    ``null`` while task ``j`` has no head), average accuracy, forgetting and backward transfer.
    They are written to ``<run dir>/continual_metrics.{json,csv}`` and ``accuracy_matrix.png``
    after every experience, logged to every configured logger against a ``continual/experience``
    axis, and printed as a table when ``fit`` ends.  The rows live in the checkpoint, so a resumed
    run keeps the rows computed before the interruption.

    When the model was grown from a checkpoint (``init_from``), a first row ``-1`` ("start") holds
    every old task's score before any training, so forgetting of old tasks is measured, not assumed.
    Columns are the stream's evaluation-only domains, then its trained domains.

    Args:
        split: the split each task is evaluated on (``"test"`` or ``"val"``).
        output_dir: where files go; defaults to the trainer's log dir.

    Raises:
        ValueError: on an unknown split.
    """

    def __init__(self, split: str = "test", output_dir: Optional[str] = None) -> None:
        super().__init__()
        if split not in ("val", "test"):
            raise ValueError(f"ContinualEvaluation: split expected 'val' or 'test', found {split!r}")
        self.split = split
        self.output_dir = output_dir
        #: experience index -> task -> metric dict
        self.rows: Dict[int, Dict[str, Dict[str, float]]] = {}
        self.experience_tasks: Dict[int, List[str]] = {}
        self.result: Optional[Dict[str, Any]] = None
        #: task -> reference numbers from the data (e.g. a semi-synthetic task's oracle C-index)
        self.reference: Optional[Dict[str, Dict[str, float]]] = None
        self._current: Optional[Tuple[int, List[str]]] = None  # (experience, tasks) being trained
        self._wandb_defined = False

    # ------------------------------------------------------------------ hooks
    def on_train_start(self, trainer: pl.Trainer, pl_module) -> None:
        initial = list(getattr(pl_module, "initial_tasks", []))
        if initial and not self.rows and trainer.current_epoch == 0:
            self.evaluate_experience(trainer, pl_module, INITIAL_ROW, initial)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module) -> None:
        # every epoch, not only at experience start, so a run resumed mid-experience knows it too
        experience = pl_module.experience_of_epoch(trainer.current_epoch)
        self._current = (experience, pl_module.experiences()[experience])

    def on_experience_end(self, trainer: pl.Trainer, pl_module, experience: int, tasks: List[str]) -> None:
        self.evaluate_experience(trainer, pl_module, experience, tasks)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        # Training stopped inside an experience (max_steps, early stopping): record it as it is.
        current = self._current
        if current is not None and current[0] not in self.rows:
            log.warning("training ended inside experience %d; evaluating the model as it is", current[0])
            self.evaluate_experience(trainer, pl_module, *current)
        if self.result is not None:
            self._print(self.result)
            self._log_final(trainer)

    # ------------------------------------------------------------------ work
    def evaluate_experience(self, trainer: pl.Trainer, pl_module, experience: int, tasks: List[str]) -> Dict[str, Any]:
        datamodule = trainer.datamodule
        if datamodule is None or not hasattr(datamodule, "eval_dataloader"):
            raise ValueError("ContinualEvaluation needs a datamodule with eval_dataloader(task, split) (a DomainStream)")
        specs = _evaluation_specs(datamodule)
        all_tasks = [s.name for s in specs]
        row: Dict[str, Dict[str, float]] = {}
        show = trainer.progress_bar_callback is not None and trainer.is_global_zero
        for task in tqdm(all_tasks, desc=f"evaluating {row_label(experience)}", disable=not show, leave=False):
            if task in pl_module.task_specs:
                row[task] = pl_module.evaluate(task, datamodule.eval_dataloader(task, self.split))
        self.rows[experience] = row
        self.experience_tasks[experience] = list(tasks)
        if self.reference is None:
            self.reference = reference_scores(datamodule, self.split)
        self.result = self.build_result(all_tasks, pl_module, specs)
        self._write(trainer, self.result)
        self._log_row(trainer, experience, row)
        return self.result

    def build_result(self, all_tasks: List[str], pl_module, specs) -> Dict[str, Any]:
        experiences = sorted(self.rows)
        matrix = [[self.rows[e][t]["score"] if t in self.rows[e] else None for t in all_tasks] for e in experiences]
        summary = summarize(matrix, all_tasks, [self.experience_tasks[e] for e in experiences])
        # each column's metric is its head's score: accuracy, C-index, Dice ...
        metrics = {spec.name: HEAD_REGISTRY[spec.kind].score_name for spec in specs}
        score_names = sorted(set(metrics.values()))
        return {
            "paradigm": type(pl_module).__name__,
            "split": self.split,
            "metric": score_names[0] if len(score_names) == 1 else score_names,
            "metrics": metrics,
            "reference": self.reference or {},
            "tasks": all_tasks,
            "experiences": experiences,
            "experience_tasks": [self.experience_tasks[e] for e in experiences],
            "accuracy_matrix": matrix,
            "average_accuracy": summary["average_accuracy"],
            "average_accuracy_per_experience": summary["average_accuracy_per_experience"],
            "forgetting": summary["forgetting"],
            "forgetting_per_task": summary["forgetting_per_task"],
            "backward_transfer": summary["backward_transfer"],
            "details": {str(e): self.rows[e] for e in experiences},
            "initial_tasks": list(getattr(pl_module, "initial_tasks", [])),
            "trainable_parameters": {str(e): c for e, c in getattr(pl_module, "trainable_counts", {}).items()},
        }

    def run_dir(self, trainer: pl.Trainer) -> Path:
        return Path(self.output_dir or trainer.log_dir or trainer.default_root_dir)

    @rank_zero_only
    def _write(self, trainer: pl.Trainer, result: Dict[str, Any]) -> None:
        out = self.run_dir(trainer)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / (METRICS_JSON + ".tmp")
        tmp.write_text(json.dumps(result, indent=2))
        os.replace(tmp, out / METRICS_JSON)  # never leave a half-written file behind
        with open(out / METRICS_CSV, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["experience", "trained_tasks", *column_labels(result), "average_accuracy"])
            for e, tasks, row, avg in zip(result["experiences"], result["experience_tasks"], result["accuracy_matrix"], result["average_accuracy_per_experience"]):
                writer.writerow([e, "+".join(tasks), *["" if v is None else f"{v:.6f}" for v in row], "" if avg is None else f"{avg:.6f}"])
        try:
            plot_matrix(result, out / METRICS_PNG)
        except Exception as err:  # a plot must never kill a training run
            log.warning("could not draw %s: %s", METRICS_PNG, err)

    def _log_row(self, trainer: pl.Trainer, experience: int, row: Dict[str, Dict[str, float]]) -> None:
        metrics: Dict[str, float] = {"continual/experience": experience}
        for task, values in row.items():
            for name, value in values.items():
                metrics[f"continual/{task}/{name}"] = value
        result = self.result or {}
        for key in ("average_accuracy", "forgetting", "backward_transfer"):
            if result.get(key) is not None:
                metrics[f"continual/{key}"] = result[key]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger) and not self._wandb_defined:
                # Per-experience metrics get their own x-axis instead of W&B's monotonic step.
                logger.experiment.define_metric("continual/experience")
                logger.experiment.define_metric("continual/*", step_metric="continual/experience")
                self._wandb_defined = True
            logger.log_metrics(metrics, step=trainer.global_step)
            logger.save()

    def _log_final(self, trainer: pl.Trainer) -> None:
        result = self.result
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                rows = [[e, *r] for e, r in zip(result["experiences"], result["accuracy_matrix"])]
                logger.log_table(key="continual/accuracy_matrix", columns=["experience", *column_labels(result)], data=rows)
                png = self.run_dir(trainer) / METRICS_PNG
                if png.is_file():
                    logger.log_image(key="continual/accuracy_matrix_plot", images=[str(png)])

    @rank_zero_only
    def _print(self, result: Dict[str, Any]) -> None:
        labels = [row_label(e, t) for e, t in zip(result["experiences"], result["experience_tasks"])]
        fmt = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
        mixed = isinstance(result["metric"], list)
        average = f"average score ({', '.join(result['metric'])})" if mixed else average_label(result)
        reference = "".join(
            f"\nreference for {task}: " + ", ".join(f"{name} {value:.4f}" for name, value in values.items())
            for task, values in result.get("reference", {}).items()
        )
        print(
            f"\nContinual evaluation ({result['paradigm']}, {result['split']} split, "
            + (f"metrics: {', '.join(result['metric'])})\n" if mixed else f"metric: {result['metric']})\n")
            + format_matrix(result["accuracy_matrix"], column_labels(result), labels)
            + f"\n{average}: {fmt(result['average_accuracy'])}   forgetting: {fmt(result['forgetting'])}"
            + f"   backward transfer: {fmt(result['backward_transfer'])}"
            + reference
            + "\n",
            flush=True,
        )

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> Dict[str, Any]:
        return {
            "reference": self.reference,
            "rows": {str(e): row for e, row in self.rows.items()},
            "experience_tasks": {str(e): t for e, t in self.experience_tasks.items()},
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        self.rows = {int(e): row for e, row in state_dict.get("rows", {}).items()}
        self.experience_tasks = {int(e): list(t) for e, t in state_dict.get("experience_tasks", {}).items()}
        self.reference = state_dict.get("reference")


def row_label(experience: int, tasks: Optional[List[str]] = None) -> str:
    """``after exp 2 (kvasir_seg)``, or ``start (init_from)`` for the row before any training."""
    if experience == INITIAL_ROW:
        return "start (init_from)"
    return f"after exp {experience}" + (f" ({'+'.join(tasks)})" if tasks else "")


def _evaluation_specs(datamodule) -> list:
    return list(getattr(datamodule, "evaluation_specs", datamodule.task_specs))


def average_label(result: Dict[str, Any]) -> str:
    """``average accuracy``, ``average dice`` ..., or ``average score`` when the columns mix metrics."""
    metric = result.get("metric", "acc")
    if isinstance(metric, list):
        return "average score"
    return "average accuracy" if metric == "acc" else f"average {metric}"


def column_labels(result: Dict[str, Any]) -> List[str]:
    """Column headers naming each task's metric, e.g. ``kvasir_seg (dice)``."""
    metrics = result.get("metrics", {})
    return [f"{task} ({metrics[task]})" if task in metrics else task for task in result["tasks"]]


def reference_scores(datamodule, split: str) -> Dict[str, Dict[str, float]]:
    """Reference numbers the domains know about themselves (e.g. a semi-synthetic task's oracle
    C-index), from each domain's optional ``reference_scores(split)``."""
    out: Dict[str, Dict[str, float]] = {}
    for spec in _evaluation_specs(datamodule):
        domain = datamodule.domain(spec.name) if hasattr(datamodule, "domain") else datamodule
        values = domain.reference_scores(split) if hasattr(domain, "reference_scores") else {}
        if values:
            out[spec.name] = {k: float(v) for k, v in values.items()}
    return out


def plot_matrix(result: Dict[str, Any], path: Path) -> None:
    """Heat map of the accuracy matrix with the numbers written in each cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.array([[math.nan if v is None else v for v in row] for row in result["accuracy_matrix"]], dtype=float)
    tasks = result["tasks"]
    metrics = result.get("metrics", {})
    # one column per task, wide enough for its name; the metric goes on a second line
    column = max(1.3, 0.075 * max(len(t) for t in tasks))
    fig, ax = plt.subplots(figsize=(2.6 + column * len(tasks), 1.9 + 0.6 * len(matrix)))
    im = ax.imshow(np.ma.masked_invalid(matrix), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), [f"{t}\n({metrics[t]})" if t in metrics else t for t in tasks], fontsize=8)
    ax.set_yticks(range(len(matrix)), [row_label(e) for e in result["experiences"]], fontsize=8)
    ax.set_xlabel(f"tested on ({result['split']} split)", fontsize=8)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            text = "–" if math.isnan(matrix[i, j]) else f"{matrix[i, j]:.3f}"
            ax.text(j, i, text, ha="center", va="center", color="w" if not math.isnan(matrix[i, j]) and matrix[i, j] < 0.6 else "k")
    avg, fgt = result.get("average_accuracy"), result.get("forgetting")
    label = average_label(result)
    stats = ", ".join(x for x in (f"{label} {avg:.3f}" if avg is not None else "", f"forgetting {fgt:.3f}" if fgt is not None else "") if x)
    ax.set_title(result["paradigm"] + (f"\n{stats}" if stats else ""), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
