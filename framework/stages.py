"""``medcl-stages``: grow one model through several configs and print one table.

Each config is an ordinary ``medcl fit`` experiment; a later stage names the previous stage's
checkpoint in ``model.init_args.init_from`` (see ``experiments/unicon/``).  After every stage the
runner takes the stage's last accuracy-matrix row (every task it evaluated, old and new) and
prints one table: rows = stages, columns = every task with its metric, plus the trainable
parameter count of the stage.  ``--alternatives`` are run after the stages and reported as extra
rows (e.g. a baseline grown from the same checkpoint).

    medcl-stages experiments/unicon/0[1-4]_*.yaml --alternatives experiments/unicon/04b_ct_only_baseline.yaml
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

__all__ = ["run_stages", "stage_table", "format_stage_table", "load_stage_runs", "main"]


def _run_one(config: Path, extra_args: Sequence[str]) -> Dict[str, Any]:
    from framework.callbacks import ContinualEvaluation
    from framework.cli import run_cli

    cli = run_cli(["fit", "--config", str(config), *extra_args])
    evaluation = next((cb for cb in cli.trainer.callbacks if isinstance(cb, ContinualEvaluation)), None)
    if evaluation is None or evaluation.result is None:
        raise ValueError(f"{config}: the stage needs a framework.callbacks.ContinualEvaluation callback to report its scores")
    try:  # one W&B run per stage (Lightning would otherwise reuse the open run)
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except ImportError:  # pragma: no cover
        pass
    return evaluation.result


def run_stages(configs: Sequence[Path], alternatives: Sequence[Path] = (), extra_args: Sequence[str] = ()) -> List[Dict[str, Any]]:
    """Run every config in order (then the alternatives) and return ``[{stage, alternative, result}]``.

    Raises:
        FileNotFoundError: if a config does not exist (checked before anything runs).
    """
    for config in [*configs, *alternatives]:
        if not Path(config).is_file():
            raise FileNotFoundError(f"medcl-stages: config not found: {config}")
    runs = []
    for config, alternative in [*((c, False) for c in configs), *((c, True) for c in alternatives)]:
        print(f"\n=== medcl-stages: {'alternative' if alternative else 'stage'} {Path(config).stem} ===", flush=True)
        runs.append({"stage": Path(config).stem, "alternative": alternative, "result": _run_one(Path(config), extra_args)})
    return runs


def _type_name(value: Any) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)


def _found(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return f"{_type_name(value)} {text[:60] + '...' if len(text) > 60 else text}"


def load_stage_runs(path: Path) -> List[Dict[str, Any]]:
    """The ``runs`` of a ``stages.json`` written by ``medcl-stages``, checked field by field.

    Checks what :func:`stage_table` reads: ``runs`` is a list of ``{"stage": str, "alternative":
    bool, "result": {...}}``; each result has ``tasks`` (a list of names), ``accuracy_matrix`` (a
    non-empty list of rows of one number or null per task), ``experience_tasks`` (a non-empty list
    of lists of names) and optionally ``metrics`` (task -> name) and ``trainable_parameters``
    (experience -> ``{"total": int}``).

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: one line naming the file and the field, what was expected and what was found
            (also for a file that is not JSON).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"medcl-stages --table-only: no results file {path}; run the stages first")
    try:
        data = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: expected the JSON results file written by medcl-stages, found text that is not JSON ({err})") from None

    def fail(field: str, expected: str, value: Any) -> None:
        raise ValueError(f"{path}: field '{field}' expected {expected}, found {_found(value)}; re-run the stages to write it again")

    def is_name_list(value: Any) -> bool:
        return isinstance(value, list) and all(isinstance(v, str) for v in value)

    if not isinstance(data, dict):
        fail("(top level)", "an object with a 'runs' list", data)
    if "runs" not in data:
        raise ValueError(f"{path}: field 'runs' expected a list of stage runs, found no such field (fields: {sorted(data)}); re-run the stages to write it again")
    runs = data["runs"]
    if not isinstance(runs, list) or not runs:
        fail("runs", "a non-empty list of stage runs", runs)
    for i, run in enumerate(runs):
        where = f"runs[{i}]"
        if not isinstance(run, dict):
            fail(where, "an object with 'stage', 'alternative' and 'result'", run)
        for key, check, expected in (
            ("stage", lambda v: isinstance(v, str), "a string"),
            ("alternative", lambda v: isinstance(v, bool), "true or false"),
            ("result", lambda v: isinstance(v, dict), "an object (a continual_metrics result)"),
        ):
            if key not in run:
                raise ValueError(f"{path}: field '{where}.{key}' expected {expected}, found no such field; re-run the stages to write it again")
            if not check(run[key]):
                fail(f"{where}.{key}", expected, run[key])
        result = run["result"]
        for key, expected in (("tasks", "a list of task names"), ("accuracy_matrix", "a non-empty list of rows"),
                              ("experience_tasks", "a non-empty list of lists of task names")):
            if key not in result:
                raise ValueError(f"{path}: field '{where}.result.{key}' expected {expected}, found no such field; re-run the stages to write it again")
        tasks = result["tasks"]
        if not is_name_list(tasks):
            fail(f"{where}.result.tasks", "a list of task names", tasks)
        matrix = result["accuracy_matrix"]
        if not isinstance(matrix, list) or not matrix:
            fail(f"{where}.result.accuracy_matrix", "a non-empty list of rows", matrix)
        for r, row in enumerate(matrix):
            if not isinstance(row, list) or len(row) != len(tasks):
                fail(f"{where}.result.accuracy_matrix[{r}]", f"a list of {len(tasks)} scores (one per task)", row)
            for c, value in enumerate(row):
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                    fail(f"{where}.result.accuracy_matrix[{r}][{c}]", "a number or null", value)
        trained = result["experience_tasks"]
        if not isinstance(trained, list) or not trained or not all(is_name_list(t) for t in trained):
            fail(f"{where}.result.experience_tasks", "a non-empty list of lists of task names", trained)
        metrics = result.get("metrics", {})
        if not isinstance(metrics, dict) or not all(isinstance(v, str) for v in metrics.values()):
            fail(f"{where}.result.metrics", "an object of task -> metric name", metrics)
        counts = result.get("trainable_parameters", {})
        if not isinstance(counts, dict):
            fail(f"{where}.result.trainable_parameters", "an object of experience -> {\"total\": count}", counts)
        for key, value in counts.items():
            try:
                int(key)
            except ValueError:
                fail(f"{where}.result.trainable_parameters", "experience numbers as keys", key)
            if not isinstance(value, dict) or isinstance(value.get("total"), bool) or not isinstance(value.get("total"), int):
                fail(f"{where}.result.trainable_parameters.{key}", "an object with an integer 'total'", value)
    return runs


def stage_table(runs: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
    """Every task's score after every stage, and how much old tasks moved after they were learned.

    Returns:
        ``tasks``, ``metrics`` (task -> metric name), ``rows`` (``stage``, ``alternative``,
        ``scores`` task -> score or None, ``trainable_parameters``), ``learned_in`` (task -> stage),
        ``max_change`` (task -> largest |score - score right after its stage| over later stages).
    """
    tasks: List[str] = []
    metrics: Dict[str, str] = {}
    rows, learned_in, max_change = [], {}, {}
    for run in runs:
        result = run["result"]
        last = result["accuracy_matrix"][-1]
        scores = dict(zip(result["tasks"], last))
        trained = result["experience_tasks"][-1]
        counts = result.get("trainable_parameters", {})
        trainable = counts[max(counts, key=int)]["total"] if counts else None
        for task in result["tasks"]:
            if task not in tasks:
                tasks.append(task)
            metrics.setdefault(task, result.get("metrics", {}).get(task, "score"))
        if not run["alternative"]:
            for task in trained:
                learned_in.setdefault(task, (run["stage"], scores.get(task)))
            for task, (stage, reference) in learned_in.items():
                value = scores.get(task)
                if stage != run["stage"] and value is not None and reference is not None:
                    max_change[task] = max(max_change.get(task, 0.0), abs(value - reference))
        rows.append({"stage": run["stage"], "alternative": run["alternative"], "trained": trained, "scores": scores, "trainable_parameters": trainable})
    return {
        "tasks": tasks,
        "metrics": metrics,
        "rows": rows,
        "learned_in": {t: s for t, (s, _) in learned_in.items()},
        "max_change": max_change,
    }


def format_stage_table(table: Dict[str, Any], digits: int = 3) -> str:
    """Plain-text (also valid Markdown) table of :func:`stage_table`."""
    headers = ["stage", *[f"{t} ({table['metrics'][t]})" for t in table["tasks"]], "trainable params"]
    lines = []
    for row in table["rows"]:
        cells = [("alt: " if row["alternative"] else "") + row["stage"]]
        for task in table["tasks"]:
            value = row["scores"].get(task)
            cell = "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
            cells.append(cell + (" *" if task in row["trained"] else ""))
        cells.append("-" if row["trainable_parameters"] is None else f"{row['trainable_parameters']:,}")
        lines.append(cells)
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(headers)]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths)) + " |", "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += ["| " + " | ".join(c.ljust(w) for c, w in zip(line, widths)) + " |" for line in lines]
    out.append("* = trained in that stage; other scores are the frozen old tasks re-tested.")
    stages = [r for r in table["rows"] if not r["alternative"]]
    for alt in (r for r in table["rows"] if r["alternative"]):
        if stages and len(alt["trained"]) == 1 and len(stages[-1]["trained"]) == 1:
            (mine,), (theirs,) = alt["trained"], stages[-1]["trained"]
            a, b = alt["scores"].get(mine), stages[-1]["scores"].get(theirs)
            if a is not None and b is not None:
                out.append(
                    f"{stages[-1]['stage']} vs alternative {alt['stage']}: {theirs} {table['metrics'][theirs]} {b:.4f} "
                    f"vs {mine} {table['metrics'][mine]} {a:.4f} (difference {b - a:+.4f})"
                )
    if table["max_change"]:
        worst = max(table["max_change"], key=table["max_change"].get)
        out.append(
            "largest change of an old task after the stage that learned it: "
            + ", ".join(f"{t} {v:.4f}" for t, v in table["max_change"].items())
            + f" (max {table['max_change'][worst]:.4f}, {worst})"
        )
    return "\n".join(out)


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``medcl-stages``; errors are printed as one line (``MEDCL_TRACEBACK=1`` for the traceback)."""
    from framework.callbacks.continual_report import json_ready
    from framework.cli import check_class_paths, one_line_errors

    parser = argparse.ArgumentParser(prog="medcl-stages", description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", type=Path, help="stage configs, in order")
    parser.add_argument("--alternatives", nargs="*", type=Path, default=[], help="configs run after the stages, reported as extra rows")
    parser.add_argument("--output", type=Path, default=Path("runs/stages"), help="folder for stages.json and stages.md")
    parser.add_argument("--table-only", action="store_true", help="print the table of --output/stages.json again without running")
    args, extra = parser.parse_known_args(argv)
    with one_line_errors("medcl-stages"):
        if args.table_only:
            runs = load_stage_runs(args.output / "stages.json")
        else:
            if not args.configs:
                raise ValueError("medcl-stages: expected one or more stage configs (or --table-only), found none")
            for config in [*args.configs, *args.alternatives]:
                check_class_paths(["--config", str(config)])
            runs = run_stages(args.configs, args.alternatives, extra)
        table = stage_table(runs)
        text = format_stage_table(table)
        args.output.mkdir(parents=True, exist_ok=True)
        # allow_nan=False: an undefined score (NaN) is written as null, listed under "undefined"
        (args.output / "stages.json").write_text(json.dumps(json_ready({"table": table, "runs": runs}), indent=2, allow_nan=False))
        (args.output / "stages.md").write_text(text + "\n")
    print(f"\nmedcl-stages: every task's score after every stage ({args.output / 'stages.md'})\n{text}", flush=True)


if __name__ == "__main__":  # pragma: no cover
    main()
