"""Continual-learning summary metrics computed from an accuracy matrix.

``R[i][j]`` is the score on task ``j`` after training experience ``i`` (``None`` while task ``j``
has no head yet; ``NaN`` when it was evaluated but its metric is undefined on the test data, e.g.
a Dice of empty masks).  Every average skips both (a mean over the defined values, never counting
them as 0).  torchmetrics has no continual-learning summaries and Avalanche's are bound to
its own strategy objects, so these few lines are written here, following Lopez-Paz & Ranzato
(2017, GEM) for backward and forward transfer and Chaudhry et al. (2018) for forgetting.

A cell of a task *before* the experience that trains it may hold a score too (a zero-shot head
scored from its class prompts): it feeds forward transfer, never the averages, forgetting or BWT.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence

import numpy as np

__all__ = ["ContinualSummary", "summarize", "zero_shot_retention", "format_matrix", "UNDEFINED", "MatrixView", "register_metric", "compute_metrics"]

#: how a value that was computed but is undefined (``NaN``) is printed; ``None`` (not evaluated) prints as ``-`` or ``n/a``
UNDEFINED = "undefined"


def _as_matrix(matrix: Sequence[Sequence[Optional[float]]]) -> np.ndarray:
    rows = [[math.nan if v is None else float(v) for v in row] for row in matrix]
    if not rows:
        return np.zeros((0, 0))
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise ValueError(f"accuracy matrix row {i} has {len(row)} entries, expected {width}")
    return np.asarray(rows, dtype=float)


class ContinualSummary(dict):
    """Dict with ``average_accuracy``, ``forgetting``, ``backward_transfer`` and per-task values."""


def summarize(
    matrix: Sequence[Sequence[Optional[float]]],
    tasks: Sequence[str],
    experience_tasks: Optional[Sequence[Sequence[str]]] = None,
    random_init: Optional[Mapping[str, Optional[float]]] = None,
) -> ContinualSummary:
    """Summaries of an accuracy matrix.

    Args:
        matrix: rows = after experience ``i``, columns = tasks (``None`` = not evaluated, ``NaN`` =
            undefined; both are left out of every mean).
        tasks: column names.
        experience_tasks: tasks trained in each experience (defaults to one task per experience,
            in column order).  A task's "learned at" row is the first experience that trained it.
        random_init: task -> score of the random-init reference model ``b_j`` (for forward transfer).

    Returns:
        ``learned_at``: task -> row that trained it (``None`` for a task never trained here);
        ``average_accuracy_per_experience``: mean of row ``i`` over the tasks learned in rows
        ``<= i`` (a grown model's old tasks are "learned" in its start row);
        ``average_accuracy``: its last value;
        ``average_accuracy_undefined``: how many learned tasks of the last row it skipped because
        their score is undefined (``NaN``, e.g. a Dice of empty masks; ``None`` = not evaluated is
        not counted): every average here is a mean over the defined values (never counting them as 0);
        ``forgetting``: mean over tasks learned before the last experience of
        ``max_{learned <= i < last} R[i][j] - R[last][j]`` (``None`` if there is no such task);
        ``forgetting_per_task``; ``backward_transfer``: mean of ``R[last][j] - R[learned_j][j]``;
        ``forward_transfer``: mean over tasks learned after the first row of
        ``R[learned_j - 1][j] - b_j`` where both are known (``None`` otherwise), and ``forward_transfer_per_task``.

    Raises:
        ValueError: if the matrix is ragged or its width differs from ``len(tasks)``.
    """
    undefined = [[v is not None and isinstance(v, float) and math.isnan(v) for v in row] for row in matrix]
    R = _as_matrix(matrix)
    if R.size and R.shape[1] != len(tasks):
        raise ValueError(f"accuracy matrix has {R.shape[1]} columns but {len(tasks)} task names")
    if experience_tasks is None:
        experience_tasks = [[t] for t in tasks[: len(R)]]
    learned_at: Dict[str, int] = {}
    for i, names in enumerate(experience_tasks):
        for name in names:
            learned_at.setdefault(name, i)

    def mean(values: List[float]) -> Optional[float]:
        values = [v for v in values if not math.isnan(v)]
        return float(np.mean(values)) if values else None

    def learned_by(i: int, name: str) -> bool:
        return name in learned_at and learned_at[name] <= i

    out = ContinualSummary(tasks=list(tasks))
    out["learned_at"] = {name: learned_at.get(name) for name in tasks}
    out["average_accuracy_per_experience"] = [mean([v for v, name in zip(row, tasks) if learned_by(i, name)]) for i, row in enumerate(R)]
    out["average_accuracy"] = out["average_accuracy_per_experience"][-1] if len(R) else None
    last = len(R) - 1
    # learned tasks of the last row whose score is undefined (NaN): skipped by the average, never 0
    out["average_accuracy_undefined"] = sum(1 for j, name in enumerate(tasks) if len(R) and learned_by(last, name) and undefined[last][j])
    forgetting: Dict[str, Optional[float]] = {}
    bwt: List[float] = []
    for j, name in enumerate(tasks):
        start = learned_at.get(name)
        if start is None or start >= last or math.isnan(R[last, j]):
            forgetting[name] = None
            continue
        history = [v for v in R[start:last, j] if not math.isnan(v)]
        forgetting[name] = float(max(history) - R[last, j]) if history else None
        if not math.isnan(R[start, j]):
            bwt.append(float(R[last, j] - R[start, j]))
    out["forgetting_per_task"] = forgetting
    out["forgetting"] = mean([v for v in forgetting.values() if v is not None])
    out["backward_transfer"] = mean(bwt)
    fwt: Dict[str, Optional[float]] = {}
    for j, name in enumerate(tasks):
        start, b = learned_at.get(name), (random_init or {}).get(name)
        before = R[start - 1, j] if start is not None and start >= 1 else math.nan
        fwt[name] = None if b is None or math.isnan(before) else float(before - b)
    out["forward_transfer_per_task"] = fwt
    out["forward_transfer"] = mean([v for v in fwt.values() if v is not None])
    return out


def _mean(values) -> Optional[float]:
    defined = [float(v) for v in values if v is not None and not math.isnan(float(v))]
    return float(np.mean(defined)) if defined else None


def zero_shot_retention(start: Mapping[str, Optional[float]], rows: Sequence[Mapping[str, Optional[float]]]) -> Dict[str, object]:
    """How much of a pretrained model's zero-shot skill a stream keeps, on the tasks it already knew.

    Args:
        start: task -> zero-shot score of the model before any training (the pretrained model).
        rows: one mapping task -> zero-shot score per experience, in order.

    Returns:
        ``start`` (mean over tasks before training), ``per_experience`` (mean after each experience),
        ``transfer`` (ZSCL's "Transfer", Zheng et al. 2023: the mean of ``per_experience``), ``final``
        (after the last experience), ``drop`` (``start - final``), and ``per_task`` ``{start, final, drop}``.
        Undefined or missing scores are skipped by every mean; a value is ``None`` where nothing is defined.
    """
    tasks = list(start) or sorted({t for row in rows for t in row})
    per_experience = [_mean(row.get(t) for t in tasks) for row in rows]
    start_mean = _mean(start.get(t) for t in tasks)
    final = per_experience[-1] if per_experience else None
    per_task = {}
    for task in tasks:
        first, last = start.get(task), (rows[-1].get(task) if rows else None)
        per_task[task] = {"start": first, "final": last, "drop": None if first is None or last is None else first - last}
    return {
        "start": start_mean,
        "per_experience": per_experience,
        "transfer": _mean(per_experience),
        "final": final,
        "drop": None if start_mean is None or final is None else start_mean - final,
        "per_task": per_task,
    }


def format_matrix(
    matrix: Sequence[Sequence[Optional[float]]],
    tasks: Sequence[str],
    row_labels: Optional[Sequence[str]] = None,
    digits: int = 3,
    pending: Optional[Sequence[Sequence[bool]]] = None,
) -> str:
    """Plain-text table of the accuracy matrix (rows: after experience i; columns: tasks).

    ``pending[i][j]`` marks a cell scored before its task was trained; it is shown in parentheses.
    A cell that was not evaluated (``None``) is shown as ``-``; one evaluated but undefined
    (``NaN``, e.g. an AUROC of a split with one class) as ``undefined``.
    """
    undefined = [[v is not None and isinstance(v, float) and math.isnan(v) for v in row] for row in matrix]
    R = _as_matrix(matrix)
    row_labels = list(row_labels or [f"after exp {i}" for i in range(len(R))])
    widths = [max(len(t), digits + 5, len(UNDEFINED) if any(row[j] for row in undefined) else 0) for j, t in enumerate(tasks)]
    first = max([len(r) for r in row_labels] + [len("trained \\ tested")])
    lines = ["trained \\ tested".ljust(first) + " | " + " | ".join(t.rjust(w) for t, w in zip(tasks, widths))]
    lines.append("-" * len(lines[0]))
    for i, (label, row) in enumerate(zip(row_labels, R)):
        cells = []
        for j, (v, w) in enumerate(zip(row, widths)):
            text = (UNDEFINED if undefined[i][j] else "-") if math.isnan(v) else f"{v:.{digits}f}"
            if pending is not None and pending[i][j] and not math.isnan(v):
                text = f"({text})"
            cells.append(text.rjust(w))
        lines.append(label.ljust(first) + " | " + " | ".join(cells))
    return "\n".join(lines)


# ---------------------------------------------------------------------- open registry of summary metrics
class MatrixView:
    """What a registered continual metric reads: the score matrix so far (rows: after each experience;
    ``NaN`` where a task was not evaluated or its score is undefined), the task names (columns) and
    the row that first trained each task (``learned_at``; absent for tasks never trained here)."""

    def __init__(self, matrix: Sequence[Sequence[Optional[float]]], tasks: Sequence[str], experience_tasks: Optional[Sequence[Sequence[str]]] = None) -> None:
        self.matrix = _as_matrix(matrix)
        self.tasks = list(tasks)
        experience_tasks = experience_tasks if experience_tasks is not None else [[t] for t in self.tasks[: len(self.matrix)]]
        self.learned_at: Dict[str, int] = {}
        for i, names in enumerate(experience_tasks):
            for name in names:
                self.learned_at.setdefault(name, i)

    @property
    def last(self) -> int:
        return len(self.matrix) - 1

    def learned(self, row: int) -> List[int]:
        """Columns of the tasks trained in rows ``<= row``."""
        return [j for j, t in enumerate(self.tasks) if t in self.learned_at and self.learned_at[t] <= row]


def register_metric(name: str):
    """Decorator: register ``fn(view: MatrixView) -> Optional[float]`` as a continual metric under ``name``;
    ``ContinualEvaluation(metrics=[name, ...])`` computes it after every experience and reports it with the
    built-in ones (JSON, CSV, printed summary, loggers).

    Raises:
        ValueError: if ``name`` is taken by another function.
    """
    from framework.core.registry import METRICS

    def decorator(fn):
        if not callable(fn):
            raise ValueError(f"register_metric({name!r}): expected a function of a MatrixView, found {fn!r}")
        return METRICS.register(name)(fn)

    return decorator


def compute_metrics(names: Sequence[str], view: MatrixView) -> Dict[str, Optional[float]]:
    """``{name: value}`` of registered metrics (names or ``class_path``-style ``"pkg.module.function"``).

    Raises:
        ValueError: on an unknown name (listing the registered ones), or a value that is not a number or None.
    """
    from framework.core.registry import METRICS

    out: Dict[str, Optional[float]] = {}
    for name in names:
        value = METRICS.get(name, where="ContinualEvaluation: metrics")(view)
        if value is not None and not isinstance(value, (int, float)):
            raise ValueError(f"continual metric {name!r} returned {type(value).__name__}; expected a number or None")
        out[name] = None if value is None else float(value)
    return out


@register_metric("learning_accuracy")
def learning_accuracy(view: MatrixView) -> Optional[float]:
    """Mean score of every task right after the experience that trained it (plasticity; Riemer et al. 2019)."""
    values = [view.matrix[view.learned_at[t], j] for j, t in enumerate(view.tasks) if t in view.learned_at and view.learned_at[t] <= view.last]
    return _mean(values)


@register_metric("min_accuracy")
def min_accuracy(view: MatrixView) -> Optional[float]:
    """The lowest score of a trained task in the last row (the worst-kept task)."""
    if view.last < 0:
        return None
    values = [float(view.matrix[view.last, j]) for j in view.learned(view.last) if not math.isnan(view.matrix[view.last, j])]
    return min(values) if values else None
