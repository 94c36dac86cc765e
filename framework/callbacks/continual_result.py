"""The result of a continual evaluation: :func:`build_result` turns the rows that
:class:`~framework.callbacks.ContinualEvaluation` records after each experience into the matrix, its
summary (average accuracy, forgetting, BWT, FWT), secondary metrics, cross-domain, cross-task and
zero-shot-retention entries: the dict every report writer (:mod:`framework.callbacks.reports`) reads."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

from framework.callbacks.reports.tables import SECONDARY_METRICS
from framework.heads import HEAD_REGISTRY
from framework.metrics.continual import MatrixView, compute_metrics, summarize, zero_shot_retention
from framework.metrics.evaluation import PROBE_DEFAULTS

__all__ = ["build_result"]


def build_result(
    all_tasks: List[str],
    pl_module,
    specs,
    datamodule,
    *,
    rows: Dict[int, Dict[str, Dict[str, float]]],
    cross_rows: Dict[int, Dict[str, Dict[str, Any]]],
    experience_tasks: Dict[int, List[str]],
    random_init_scores: Optional[Dict[str, Dict[str, Any]]],
    reference: Optional[Dict[str, Dict[str, float]]],
    split: str,
    probe_samples_per_class: int,
    metric_names: Sequence[str] = (),
) -> Dict[str, Any]:
    """The result dict of a continual evaluation (what ``continual_metrics.json`` holds).

    Args:
        all_tasks: the matrix columns (evaluation-only domains, then trained ones).
        pl_module: the paradigm (its class name, ``initial_tasks``, ``trainable_counts``).
        specs: the task specs of the columns (each column's metric is its head's score).
        datamodule: the stream (cross-domain, cross-task and known tasks), or ``None``.
        rows, cross_rows, experience_tasks, random_init_scores, reference: what
            :class:`~framework.callbacks.ContinualEvaluation` recorded (its attributes of those names;
            ``random_init_scores`` is its ``random_init``).
        split: the evaluated split.
        probe_samples_per_class: the linear probe's budget.
        metric_names: registered continual metrics (:func:`~framework.metrics.continual.register_metric`),
            computed after every experience on the matrix so far (``result["metrics_per_experience"]``).
    """
    experiences = sorted(rows)
    score = lambda values: None if values is None else values.get("score")  # noqa: E731
    matrix = [[score(rows[e].get(t)) for t in all_tasks] for e in experiences]
    task_reference = (random_init_scores or {}).get("tasks", {})
    random_init = {t: score(v) for t, v in task_reference.items() if score(v) is not None}
    summary = summarize(matrix, all_tasks, [experience_tasks[e] for e in experiences], random_init=random_init)
    per_row = [compute_metrics(metric_names, MatrixView(matrix[: k + 1], all_tasks, [experience_tasks[e] for e in experiences[: k + 1]])) for k in range(len(experiences))]
    registered = {name: [row[name] for row in per_row] for name in metric_names}
    # each column's metric is its head's score: accuracy, C-index, Dice ...
    metrics = {spec.name: HEAD_REGISTRY[spec.kind].score_name for spec in specs}
    score_names = sorted(set(metrics.values()))
    secondary = {}
    for metric in SECONDARY_METRICS:
        values = [[(rows[e].get(t) or {}).get(metric) for t in all_tasks] for e in experiences]
        if any(v is not None for row in values for v in row):
            secondary[metric] = values
    cross_domain = {}
    for name, task in getattr(datamodule, "cross_domain_task", {}).items():
        spec = datamodule.domain(task).task_spec
        per_row = [cross_rows.get(e, {}).get("cross_domain", {}).get(name) for e in experiences]
        cross_domain[name] = {
            "task": task,
            "metric": HEAD_REGISTRY[spec.kind].score_name,
            "scores": [score(v) for v in per_row],
            "details": per_row,
            "random_init": score((random_init_scores or {}).get("cross_domain", {}).get(name)),
        }
    cross_task = {}
    for spec in getattr(datamodule, "cross_task_specs", []):
        per_row = [cross_rows.get(e, {}).get("cross_task", {}).get(spec.name) or {} for e in experiences]
        ref = (random_init_scores or {}).get("cross_task", {}).get(spec.name) or {}
        cross_task[spec.name] = {
            "metric": "acc",
            "zero_shot": [score(v.get("zero_shot")) for v in per_row],
            "linear_probe": [score(v.get("linear_probe")) for v in per_row],
            "zero_shot_details": [v.get("zero_shot") for v in per_row],
            "linear_probe_details": [v.get("linear_probe") for v in per_row],
            "random_init": {k: score(ref.get(k)) for k in ("zero_shot", "linear_probe")},
        }
    retention = None
    known = [spec.name for spec in getattr(datamodule, "known_task_specs", [])]
    if known:
        per_row = [cross_rows.get(e, {}).get("known_task", {}) for e in experiences]
        start = {name: score(((random_init_scores or {}).get("known_task") or {}).get(name)) for name in known}
        retention = {
            "metric": "acc",
            "scores": {name: [score(row.get(name)) for row in per_row] for name in known},
            "details": {name: [row.get(name) for row in per_row] for name in known},
            **zero_shot_retention(start, [{name: score(row.get(name)) for name in known} for row in per_row]),
        }
    return {
        "paradigm": type(pl_module).__name__,
        "split": split,
        "metric": score_names[0] if len(score_names) == 1 else score_names,
        "metrics": metrics,
        "reference": reference or {},
        "tasks": all_tasks,
        "experiences": experiences,
        "experience_tasks": [experience_tasks[e] for e in experiences],
        "learned_at": summary["learned_at"],
        "accuracy_matrix": matrix,
        "average_accuracy": summary["average_accuracy"],
        "average_accuracy_per_experience": summary["average_accuracy_per_experience"],
        "average_accuracy_undefined": summary["average_accuracy_undefined"],
        "forgetting": summary["forgetting"],
        "forgetting_per_task": summary["forgetting_per_task"],
        "bwt": summary["backward_transfer"],
        "fwt": summary["forward_transfer"],
        "fwt_per_task": summary["forward_transfer_per_task"],
        "metrics_per_experience": registered,
        "random_init": random_init,
        "secondary": secondary,
        "cross_domain": cross_domain,
        "cross_task": cross_task,
        "zero_shot_retention": retention,
        "linear_probe_budget": (
            {"samples_per_class": probe_samples_per_class, "classifier": "sklearn LogisticRegression", **{k: v for k, v in PROBE_DEFAULTS.items() if k != "samples_per_class"}}
            if cross_task and probe_samples_per_class else None
        ),
        "details": {str(e): rows[e] for e in experiences},
        "initial_tasks": list(getattr(pl_module, "initial_tasks", [])),
        "trainable_parameters": {str(e): c for e, c in getattr(pl_module, "trainable_counts", {}).items()},
    }
