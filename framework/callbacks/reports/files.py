"""The files a continual evaluation result is written to, in the run folder: ``continual_metrics.json``,
``continual_metrics.csv``, the heat map ``accuracy_matrix.png`` and the per-task curves ``task_curves.png``
(:func:`write_result_files` writes all four)."""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Dict, List

from framework.callbacks.reports.tables import SECONDARY_METRICS, average_label, column_labels, json_ready, pending_mask, row_label
from framework.callbacks.reports.task_agnostic import TASK_AGNOSTIC_PNG, plot_task_agnostic, task_agnostic_cells, task_agnostic_columns

__all__ = [
    "METRICS_JSON", "METRICS_CSV", "METRICS_PNG", "CURVES_PNG", "write_result_files", "write_json", "csv_columns", "write_csv",
    "plot_matrix", "plot_curves",
]

# the logger of framework.callbacks.continual_eval, where a failed plot was always reported
log = logging.getLogger("framework.callbacks.continual_eval")

METRICS_JSON = "continual_metrics.json"
METRICS_CSV = "continual_metrics.csv"
METRICS_PNG = "accuracy_matrix.png"
CURVES_PNG = "task_curves.png"


def write_result_files(out: Path, result: Dict[str, Any]) -> None:
    """Write ``result`` to ``out`` as JSON, CSV and both plots (a plot that fails is logged, never raised)."""
    out.mkdir(parents=True, exist_ok=True)
    write_json(result, out / METRICS_JSON)
    write_csv(result, out / METRICS_CSV)
    for name, draw in ((METRICS_PNG, plot_matrix), (CURVES_PNG, plot_curves), (TASK_AGNOSTIC_PNG, plot_task_agnostic)):
        try:
            draw(result, out / name)
        except Exception as err:  # a plot must never kill a training run
            log.warning("could not draw %s: %s", name, err)


def write_json(result: Dict[str, Any], path: Path) -> None:
    """``result`` as JSON, replacing ``path`` atomically (never a half-written file).

    JSON has no NaN: an undefined metric (an AUROC of a one-class split) is written as null and
    listed, by its JSON pointer, under ``"undefined"`` (see :func:`~framework.callbacks.reports.tables.json_ready`).
    """
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(json_ready(result), indent=2, allow_nan=False))
    os.replace(tmp, path)


def csv_columns(result: Dict[str, Any]) -> List[str]:
    """Header of ``continual_metrics.csv``."""
    columns = ["experience", "trained_tasks", *column_labels(result), "average_accuracy", *result.get("metrics_per_experience", {})]
    for metric in SECONDARY_METRICS:
        if metric in result.get("secondary", {}):
            columns += [f"{task}:{metric}" for task in result["tasks"]]
    columns += [f"cross_domain:{name}" for name in result.get("cross_domain", {})]
    columns += [f"cross_task:{name}:{kind}" for name in result.get("cross_task", {}) for kind in ("zero_shot", "linear_probe")]
    columns += [f"known_task:{name}:zero_shot" for name in (result.get("zero_shot_retention") or {}).get("scores", {})]
    return columns + task_agnostic_columns(result.get("task_agnostic"))


def write_csv(result: Dict[str, Any], path: Path) -> None:
    """One row per evaluated experience: the scores, the average, secondary metrics, cross-domain
    and cross-task scores; a last ``random_init`` row holds the reference model's numbers."""
    cell = lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.6f}"  # noqa: E731
    secondary = result.get("secondary", {})
    retention = result.get("zero_shot_retention") or {}
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(csv_columns(result))
        rows = zip(result["experiences"], result["experience_tasks"], result["accuracy_matrix"], result["average_accuracy_per_experience"])
        for i, (e, tasks, row, avg) in enumerate(rows):
            line = [e, "+".join(tasks), *map(cell, row), cell(avg), *(cell(values[i]) for values in result.get("metrics_per_experience", {}).values())]
            for metric in SECONDARY_METRICS:
                if metric in secondary:
                    line += map(cell, secondary[metric][i])
            line += [cell(entry["scores"][i]) for entry in result.get("cross_domain", {}).values()]
            line += [cell(entry[k][i]) for entry in result.get("cross_task", {}).values() for k in ("zero_shot", "linear_probe")]
            line += [cell(scores[i]) for scores in retention.get("scores", {}).values()]
            line += [cell(v) for v in task_agnostic_cells(result.get("task_agnostic"), i)]
            writer.writerow(line)
        if result.get("random_init") or result.get("cross_domain") or result.get("cross_task") or retention:
            reference = result.get("random_init") or {}
            line = ["random_init", "", *[cell(reference.get(t)) for t in result["tasks"]], ""]
            for metric in SECONDARY_METRICS:
                if metric in secondary:
                    line += [""] * len(result["tasks"])
            line += [cell(entry.get("random_init")) for entry in result.get("cross_domain", {}).values()]
            line += [cell((entry.get("random_init") or {}).get(k)) for entry in result.get("cross_task", {}).values() for k in ("zero_shot", "linear_probe")]
            line += [cell(retention["per_task"][name]["start"]) for name in retention.get("scores", {})]
            writer.writerow(line)


def plot_matrix(result: Dict[str, Any], path: Path) -> None:
    """Heat map of the accuracy matrix with the numbers in each cell; zero-shot cells (before the
    task was trained) are hatched and their numbers in parentheses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.array([[math.nan if v is None else v for v in row] for row in result["accuracy_matrix"]], dtype=float)
    pending = np.array(pending_mask(result), dtype=bool).reshape(matrix.shape)
    tasks = result["tasks"]
    metrics = result.get("metrics", {})
    column = max(1.3, 0.075 * max(len(t) for t in tasks))
    fig, ax = plt.subplots(figsize=(2.6 + column * len(tasks), 1.9 + 0.6 * len(matrix)))
    im = ax.imshow(np.ma.masked_invalid(np.where(pending, np.nan, matrix)), vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(tasks)), [f"{t}\n({metrics[t]})" if t in metrics else t for t in tasks], fontsize=8)
    ax.set_yticks(range(len(matrix)), [row_label(e) for e in result["experiences"]], fontsize=8)
    ax.set_xlabel(f"tested on ({result['split']} split)", fontsize=8)
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            v = matrix[i, j]
            if pending[i, j] and not math.isnan(v):
                ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//", edgecolor="0.7", lw=0))
                ax.text(j, i, f"({v:.3f})", ha="center", va="center", color="0.35", fontsize=8)
                continue
            text = "–" if math.isnan(v) else f"{v:.3f}"
            ax.text(j, i, text, ha="center", va="center", color="w" if not math.isnan(v) and v < 0.6 else "k")
    stats = []
    for key, label in (("average_accuracy", average_label(result)), ("forgetting", "forgetting"), ("bwt", "BWT"), ("fwt", "FWT")):
        if result.get(key) is not None:
            stats.append(f"{label} {result[key]:.3f}")
    ax.set_title(result["paradigm"] + (f"\n{', '.join(stats)}" if stats else ""), fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_curves(result: Dict[str, Any], path: Path) -> None:
    """Per-task score after each experience: solid once trained, dotted before (zero-shot),
    dashed for cross-domain sets, dash-dot for cross-task zero-shot and linear probe, dotted diamonds for known (pretraining) tasks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(result["experiences"])))
    labels = [row_label(e) for e in result["experiences"]]
    pending = pending_mask(result)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.4 * len(x) + 3), 3.6))
    nan = lambda v: math.nan if v is None else v  # noqa: E731
    for j, task in enumerate(result["tasks"]):
        values = [nan(row[j]) for row in result["accuracy_matrix"]]
        trained = [math.nan if pending[i][j] else v for i, v in enumerate(values)]
        before = [v if pending[i][j] or (i > 0 and pending[i - 1][j]) else math.nan for i, v in enumerate(values)]
        (line,) = ax.plot(x, trained, marker="o", label=f"{task} ({result['metrics'].get(task, '')})")
        if any(not math.isnan(v) for v in before):
            ax.plot(x, before, ls=":", marker=".", color=line.get_color())
    for name, entry in result.get("cross_domain", {}).items():
        ax.plot(x, [nan(v) for v in entry["scores"]], ls="--", marker="s", label=f"{name} (cross-domain)")
    for name, entry in result.get("cross_task", {}).items():
        ax.plot(x, [nan(v) for v in entry["zero_shot"]], ls="-.", marker="^", label=f"{name} zero-shot (cross-task)")
        ax.plot(x, [nan(v) for v in entry["linear_probe"]], ls="-.", marker="v", label=f"{name} linear probe (cross-task)")
    for name, scores in ((result.get("zero_shot_retention") or {}).get("scores") or {}).items():
        ax.plot(x, [nan(v) for v in scores], ls=(0, (1, 1)), marker="D", label=f"{name} zero-shot (known: pretraining domain)")
    ax.set_xticks(x, labels, fontsize=7, rotation=20, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score", fontsize=8)
    ax.set_title(f"{result['paradigm']}: score after each experience\n(dotted: zero-shot, before the task was trained)", fontsize=9)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
