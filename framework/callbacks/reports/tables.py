"""How a continual evaluation result reads as text: row and column labels, the undefined-metric
convention of ``continual_metrics.json`` (:func:`json_ready`, :func:`restore_undefined`) and the
printed report (:func:`format_report`, :func:`print_report`).

Pure functions of the result dict that :class:`~framework.callbacks.ContinualEvaluation` writes to
``continual_metrics.json``, so they can be re-run on a saved result.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

from pytorch_lightning.utilities import rank_zero_only

from framework.callbacks.reports.task_agnostic import format_task_agnostic
from framework.metrics.continual import UNDEFINED, format_matrix

__all__ = [
    "INITIAL_ROW", "row_label", "average_label", "column_labels", "pending_mask", "format_report", "print_report",
    "SECONDARY_METRICS", "json_ready", "restore_undefined", "UNDEFINED_NOTE",
]

#: what ``continual_metrics.json`` says about its ``undefined`` list
UNDEFINED_NOTE = (
    "JSON has no NaN: each JSON pointer in 'undefined' marks a null that is a metric undefined on the test data "
    "(e.g. an AUROC of a test split holding a single class), not a value that was never evaluated; averages skip "
    "undefined values, never counting them as 0"
)
#: printed under a report that shows an undefined value
_UNDEFINED_FOOTNOTE = (
    f"({UNDEFINED}: the metric has no value on this test data, e.g. an AUROC needs positive and negative samples of a "
    f"class and the split holds one class; it is skipped by every average, never counted as 0)"
)

#: experience index of the row evaluated before training a model loaded with ``init_from``
INITIAL_ROW = -1
#: metrics shown beside the primary score when a head reports them (MedMNIST reports ACC and AUC)
SECONDARY_METRICS = ("auroc", "balanced_acc")


def row_label(experience: int, tasks: Optional[List[str]] = None) -> str:
    """``after exp 2 (kvasir_seg)``, or ``start (init_from)`` for the row before any training."""
    if experience == INITIAL_ROW:
        return "start (init_from)"
    return f"after exp {experience}" + (f" ({'+'.join(tasks)})" if tasks else "")


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


def pending_mask(result: Dict[str, Any]) -> List[List[bool]]:
    """``mask[i][j]``: row ``i`` scored task ``j`` before training it, or a task never trained (a zero-shot cell)."""
    learned = result.get("learned_at")
    if learned is None:  # a result written before MedCL recorded it
        return [[False] * len(result["tasks"]) for _ in result["accuracy_matrix"]]
    return [
        [learned.get(task) is None or i < learned[task] for task in result["tasks"]]
        for i in range(len(result["accuracy_matrix"]))
    ]


def _is_nan(value: Any) -> bool:
    return isinstance(value, float) and math.isnan(value)


def _pointer(path: List[Any]) -> str:
    return "".join("/" + str(key).replace("~", "~0").replace("/", "~1") for key in path)


def json_ready(result: Any) -> Any:
    """A copy of a result dict that ``json.dumps(..., allow_nan=False)`` accepts: every ``NaN``
    (an undefined metric) becomes ``null``, and a top-level ``undefined`` list names each of them by
    its JSON pointer (RFC 6901, e.g. ``/details/1/bloodmnist/auroc``), with ``undefined_note``
    saying so.  :func:`restore_undefined` turns them back into ``NaN``."""
    found: List[str] = []

    def walk(value: Any, path: List[Any]) -> Any:
        if _is_nan(value):
            found.append(_pointer(path))
            return None
        if isinstance(value, dict):
            return {key: walk(item, [*path, key]) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [walk(item, [*path, i]) for i, item in enumerate(value)]
        return value

    body = {key: item for key, item in result.items() if key not in ("undefined", "undefined_note")}
    out = walk(body, [])
    out["undefined"] = found
    out["undefined_note"] = UNDEFINED_NOTE
    return out


def restore_undefined(result: Dict[str, Any]) -> Dict[str, Any]:
    """``result`` (as read from ``continual_metrics.json``) with ``NaN`` back at the pointers of its
    ``undefined`` list; a result without the list is returned as it is."""
    pointers = result.get("undefined") or []
    if not pointers:
        return result
    import copy

    out = copy.deepcopy(result)
    for pointer in pointers:
        keys = [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]
        node: Any = out
        try:
            for key in keys[:-1]:
                node = node[int(key)] if isinstance(node, list) else node[key]
            last = keys[-1]
            if isinstance(node, list):
                node[int(last)] = math.nan
            elif last in node:
                node[last] = math.nan
        except (KeyError, IndexError, ValueError, TypeError):
            continue  # a pointer that does not fit the result: leave the value as it is
    return out


def _fmt(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return UNDEFINED if _is_nan(value) else f"{value:.4f}"


def format_report(result: Dict[str, Any]) -> str:
    """The printed report: the matrix, the summary line, secondary metrics, cross-domain and cross-task tables.

    ``n/a``: not evaluated or does not apply; ``undefined``: evaluated, but the metric has no value
    on that test data (e.g. an AUROC of a split with one class); averages skip both.
    """
    result = restore_undefined(result)
    labels = [row_label(e, t) for e, t in zip(result["experiences"], result["experience_tasks"])]
    mixed = isinstance(result["metric"], list)
    parts = [
        f"\nContinual evaluation ({result['paradigm']}, {result['split']} split, "
        + (f"metrics: {', '.join(result['metric'])})" if mixed else f"metric: {result['metric']})"),
        format_matrix(result["accuracy_matrix"], column_labels(result), labels, pending=pending_mask(result)),
    ]
    if any(any(row) for row in pending_mask(result)):
        parts.append("(in parentheses: scored zero-shot from class prompts before the task was trained)")
    parts.append(
        f"{average_label(result)}: {_fmt(result['average_accuracy'])}"
        + (f" (skipping {result['average_accuracy_undefined']} undefined score(s))" if result.get("average_accuracy_undefined") else "")
        + f"   forgetting: {_fmt(result['forgetting'])}   BWT: {_fmt(result['bwt'])}   FWT: {_fmt(result['fwt'])}"
        + ("" if result.get("random_init") else "   (FWT needs zero-shot tasks and the random-init reference)")
    )
    registered = {k: v[-1] for k, v in result.get("metrics_per_experience", {}).items() if v}
    if registered:
        parts.append("   ".join(f"{name}: {_fmt(value)}" for name, value in registered.items()))
    secondary = result.get("secondary", {})
    if secondary:
        names = [m for m in SECONDARY_METRICS if m in secondary]
        last = len(result["accuracy_matrix"]) - 1
        rows = [[task, *[secondary[m][last][j] for m in names]] for j, task in enumerate(result["tasks"]) if any(secondary[m][last][j] is not None for m in names)]
        if rows:
            parts.append(f"\nSecondary metrics, {labels[-1]}:")
            parts.append(_table(["task", *names], [[r[0], *map(_fmt, r[1:])] for r in rows]))
    for task, values in result.get("reference", {}).items():
        parts.append(f"reference for {task}: " + ", ".join(f"{name} {value:.4f}" for name, value in values.items()))
    cross_domain = result.get("cross_domain", {})
    if cross_domain:
        parts.append("\nCross-domain (evaluation-only sources of a trained task; score of that task's head):")
        header = ["row", *[f"{name} <- {entry['task']} ({entry['metric']})" for name, entry in cross_domain.items()]]
        body = [[label, *[_fmt(entry["scores"][i]) for entry in cross_domain.values()]] for i, label in enumerate(labels)]
        body.append(["random init", *[_fmt(entry.get("random_init")) for entry in cross_domain.values()]])
        parts.append(_table(header, body))
    cross_task = result.get("cross_task", {})
    if cross_task:
        budget = result.get("linear_probe_budget") or {}
        parts.append(
            "\nCross-task (never-trained tasks; accuracy zero-shot from class prompts | linear probe on frozen features"
            + (f", {budget.get('samples_per_class')} training images per class" if budget else "")
            + "):"
        )
        header = ["row", *[f"{name} {kind}" for name in cross_task for kind in ("zero-shot", "probe")]]
        body = [[label, *[_fmt(entry[k][i]) for entry in cross_task.values() for k in ("zero_shot", "linear_probe")]] for i, label in enumerate(labels)]
        body.append(["random init", *[_fmt((entry.get("random_init") or {}).get(k)) for entry in cross_task.values() for k in ("zero_shot", "linear_probe")]])
        parts.append(_table(header, body))
    retention = result.get("zero_shot_retention")
    if retention:
        parts.append(
            "\nZero-shot retention (known tasks: the pretrained model's pretraining domains, seen in pretraining, never trained "
            "here; accuracy from class prompts):"
        )
        scores = retention["scores"]
        body = [["start (pretrained)", *[_fmt(retention["per_task"][n]["start"]) for n in scores], _fmt(retention["start"])]]
        body += [[label, *[_fmt(scores[n][i]) for n in scores], _fmt(retention["per_experience"][i])] for i, label in enumerate(labels)]
        parts.append(_table(["row", *scores, "mean"], body))
        parts.append(f"transfer (mean over experiences): {_fmt(retention['transfer'])}   drop (start - final): {_fmt(retention['drop'])}")
    if result.get("task_agnostic"):
        parts += format_task_agnostic(result["task_agnostic"], labels, _table)
    if any(UNDEFINED in part for part in parts[1:]):
        parts.append(_UNDEFINED_FOOTNOTE)
    return "\n".join(parts) + "\n"


def _table(header: List[str], rows: List[List[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [" | ".join(str(h).ljust(w) for h, w in zip(header, widths))]
    lines.append("-" * len(lines[0]))
    lines += [" | ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


@rank_zero_only
def print_report(result: Dict[str, Any]) -> None:
    """Print :func:`format_report` of ``result`` (on rank 0 only)."""
    print(format_report(result), flush=True)
