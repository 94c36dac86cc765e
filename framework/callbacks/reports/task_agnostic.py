"""The task-agnostic part of the continual result (a model with a task router): JSON section,
printed table, CSV columns, logged scalars and plot (:mod:`framework.metrics.task_agnostic`)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Dict, List, Optional

__all__ = ["task_agnostic_section", "format_task_agnostic", "task_agnostic_columns", "task_agnostic_cells", "task_agnostic_metrics", "plot_task_agnostic"]

TASK_AGNOSTIC_PNG = "task_agnostic.png"


def _value(v: Any) -> Optional[float]:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def task_agnostic_section(rows: Dict[int, Dict[str, Any]], result: Dict[str, Any], router: str) -> Optional[Dict[str, Any]]:
    """Per-experience lists (aligned with ``result["experiences"]``) of the task-agnostic rows, and
    the task-aware average of the same tasks beside them; ``None`` when no row was recorded."""
    if not rows:
        return None
    experiences = result["experiences"]
    sources = list(dict.fromkeys(s for r in rows.values() for s in r["routing_accuracy"]))
    tasks = list(dict.fromkeys(t for r in rows.values() for t in r["scores"]))
    domains = list(dict.fromkeys(d for r in rows.values() for d in r["ood"]))
    pick = lambda key, name: [_value(rows.get(e, {}).get(key, {}).get(name)) for e in experiences]  # noqa: E731
    aware: List[Optional[float]] = []
    for i, e in enumerate(experiences):
        scored = [t for t, v in rows.get(e, {}).get("scores", {}).items() if _value(v) is not None]
        values = [result["accuracy_matrix"][i][result["tasks"].index(t)] for t in scored if t in result["tasks"]]
        values = [v for v in values if _value(v) is not None]
        aware.append(sum(values) / len(values) if values else None)
    agnostic = [_value(rows.get(e, {}).get("average")) for e in experiences]
    union_tasks = list(dict.fromkeys(t for r in rows.values() for t in (r.get("union_head") or {}).get("scores", {})))
    return {
        "router": router,
        "sources": sources,
        "routing_accuracy": {s: pick("routing_accuracy", s) for s in sources},
        "unknown_rate": {s: pick("unknown_rate", s) for s in sources},
        "scores": {t: pick("scores", t) for t in tasks},
        "average": agnostic,
        "task_aware_average": aware,
        "gap": [a - b if a is not None and b is not None else None for a, b in zip(aware, agnostic)],
        "union_head": {
            "scores": {t: [_value(((rows.get(e, {}).get("union_head") or {}).get("scores") or {}).get(t)) for e in experiences] for t in union_tasks},
            "average": [_value((rows.get(e, {}).get("union_head") or {}).get("average")) for e in experiences],
        },
        "ood": {d: {k: [_value(rows.get(e, {}).get("ood", {}).get(d, {}).get(k)) for e in experiences] for k in ("auroc", "unknown_rate")}
                for d in domains},
    }


def _fmt(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def format_task_agnostic(section: Dict[str, Any], labels: List[str], table) -> List[str]:
    """Printed lines: routing accuracy per source, task-agnostic scores, the gap, OOD AUROC."""
    parts = [f"\nWithout task labels ({section['router']} router: route each test image, then predict; a wrong route or 'unknown' counts as wrong):"]
    header = ["row", *[f"route {s}" for s in section["sources"]], *section["scores"], "average", "task-aware avg", "gap"]
    body = [
        [label, *[_fmt(section["routing_accuracy"][s][i]) for s in section["sources"]], *[_fmt(v[i]) for v in section["scores"].values()],
         _fmt(section["average"][i]), _fmt(section["task_aware_average"][i]), _fmt(section["gap"][i])]
        for i, label in enumerate(labels)
    ]
    parts.append(table(header, body))
    union = section["union_head"]
    if union["scores"]:
        parts.append("\nOne head over the union of classes (no router; the classification heads' logits in one softmax):")
        body = [[label, *[_fmt(v[i]) for v in union["scores"].values()], _fmt(union["average"][i])] for i, label in enumerate(labels)]
        parts.append(table(["row", *union["scores"], "average"], body))
    unknown = {s: v[-1] for s, v in section["unknown_rate"].items() if v and v[-1] is not None}
    if unknown:
        parts.append("called unknown (learned sources' test images, last row): " + ", ".join(f"{s} {v:.4f}" for s, v in unknown.items()))
    for name, entry in section["ood"].items():
        parts.append(f"never-learned {name}: OOD AUROC {_fmt(entry['auroc'][-1])}, called unknown {_fmt(entry['unknown_rate'][-1])} (last row)")
    return parts


def task_agnostic_columns(section: Optional[Dict[str, Any]]) -> List[str]:
    if not section:
        return []
    columns = [f"routing:{s}" for s in section["sources"]] + [f"task_agnostic:{t}" for t in section["scores"]]
    columns += ["task_agnostic_average", "task_agnostic_gap", "union_head_average"]
    return columns + [f"ood_auroc:{d}" for d in section["ood"]]


def task_agnostic_cells(section: Optional[Dict[str, Any]], i: int) -> List[Optional[float]]:
    if not section:
        return []
    cells = [section["routing_accuracy"][s][i] for s in section["sources"]] + [v[i] for v in section["scores"].values()]
    cells += [section["average"][i], section["gap"][i], section["union_head"]["average"][i]]
    return cells + [entry["auroc"][i] for entry in section["ood"].values()]


def task_agnostic_metrics(section: Optional[Dict[str, Any]]) -> Dict[str, float]:
    """The latest row's scalars, for the loggers (``continual/task_agnostic/...``)."""
    out: Dict[str, float] = {}
    if not section:
        return out
    for s, values in section["routing_accuracy"].items():
        if values[-1] is not None:
            out[f"continual/routing/{s}"] = values[-1]
    for t, values in section["scores"].items():
        if values[-1] is not None:
            out[f"continual/task_agnostic/{t}"] = values[-1]
    for key in ("average", "gap"):
        if section[key][-1] is not None:
            out[f"continual/task_agnostic_{key}"] = section[key][-1]
    if section["union_head"]["average"][-1] is not None:
        out["continual/union_head_average"] = section["union_head"]["average"][-1]
    for d, entry in section["ood"].items():
        if entry["auroc"][-1] is not None:
            out[f"continual/ood/{d}/auroc"] = entry["auroc"][-1]
    return out


def plot_task_agnostic(result: Dict[str, Any], path: Path) -> None:
    """Routing accuracy per source, and the task-aware and task-agnostic averages, after every experience."""
    section = result.get("task_agnostic")
    if not section:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = list(range(len(result["experiences"])))
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for s, values in section["routing_accuracy"].items():
        left.plot(x, [math.nan if v is None else v for v in values], marker="o", label=s)
    left.set_title("routing accuracy per source")
    for key, label in (("task_aware_average", "task-aware average"), ("average", "task-agnostic average (routed)")):
        right.plot(x, [math.nan if v is None else v for v in section[key]], marker="o", label=label)
    union = section["union_head"]["average"]
    if any(v is not None for v in union):
        right.plot(x, [math.nan if v is None else v for v in union], marker="^", label="one head over the union (no router)")
    for d, entry in section["ood"].items():
        right.plot(x, [math.nan if v is None else v for v in entry["auroc"]], marker="s", linestyle="--", label=f"OOD AUROC {d}")
    right.set_title("scores with and without task labels")
    for ax in (left, right):
        ax.set_xticks(x, [f"after {e}" for e in result["experiences"]], fontsize=8)
        ax.set_ylim(0, 1.02)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
