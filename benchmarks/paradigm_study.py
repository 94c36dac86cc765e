"""Paradigm study (Yi et al. 2023) on BloodMNIST -> OrganAMNIST: run the four regimes, compare.

Runs ``medcl fit`` on each config in experiments/paradigms/ (same data subset for every regime),
then writes ``benchmarks/results/paradigm_study.{json,md,png}`` with every accuracy matrix,
average accuracy, forgetting and wall-clock time.

    python benchmarks/paradigm_study.py                       # all four regimes (~15 min on 2 CPU cores)
    python benchmarks/paradigm_study.py --regimes sequential sequential_replay
    python benchmarks/paradigm_study.py --collect-only        # re-read the latest finished runs
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from framework.callbacks.continual_report import pending_mask
from runs import REPO, RESULTS, latest_metrics as _latest, load_results, record, run_config

REGIMES = ["specialized", "joint", "sequential", "sequential_replay"]


def latest_metrics(regime: str) -> Path:
    return _latest(REPO / "runs" / "paradigms" / regime)


def run_regime(regime: str, extra: list) -> float:
    return run_config(f"experiments/paradigms/{regime}.yaml", extra, label=regime)


def markdown(results: dict) -> str:
    tasks = next(iter(results.values()))["tasks"]
    lines = ["# Paradigm study: BloodMNIST -> OrganAMNIST", "",
             "Test accuracy on the full official test sets; 6,000 training images per domain for every regime.", "",
             "| regime | " + " | ".join(f"{t} (final)" for t in tasks) + " | average accuracy | forgetting | wall time (s) |",
             "|---|" + "---|" * (len(tasks) + 3)]
    for regime, r in results.items():
        final = r["accuracy_matrix"][-1]
        fgt = "n/a" if r["forgetting"] is None else f"{r['forgetting']:.3f}"
        wall = "n/a" if r.get("wall_time_s") is None else f"{r['wall_time_s']:.0f}"
        lines.append(f"| {regime} | " + " | ".join(f"{v:.3f}" for v in final) + f" | {r['average_accuracy']:.3f} | {fgt} | {wall} |")
    lines += ["", "Accuracy matrices (row = after experience i, column = task; in parentheses: scored zero-shot before the task was trained):", ""]
    for regime, r in results.items():
        lines.append(f"**{regime}**")
        lines.append("")
        lines.append("| after | " + " | ".join(tasks) + " |")
        lines.append("|---|" + "---|" * len(tasks))
        for e, row, pending in zip(r["experience_tasks"], r["accuracy_matrix"], pending_mask(r)):
            cells = ["-" if v is None else (f"({v:.3f})" if p else f"{v:.3f}") for v, p in zip(row, pending)]
            lines.append(f"| {'+'.join(e)} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = next(iter(results.values()))["tasks"]
    regimes = list(results)
    x = np.arange(len(regimes))
    width = 0.8 / len(tasks)
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for k, task in enumerate(tasks):
        values = [results[r]["accuracy_matrix"][-1][k] for r in regimes]
        bars = ax.bar(x + (k - (len(tasks) - 1) / 2) * width, values, width, label=task)
        ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_xticks(x, regimes)
    ax.set_ylim(0, 1)
    ax.set_ylabel("final test accuracy")
    ax.set_title("Blood -> OrganA: final accuracy per domain")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regimes", nargs="+", default=REGIMES, choices=REGIMES)
    parser.add_argument("--collect-only", action="store_true", help="do not train; read the latest finished runs")
    parser.add_argument("extra", nargs="*", help="extra CLI overrides passed to every run, after --")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    previous = load_results("paradigm_study")
    results = {r: previous[r] for r in REGIMES if r in previous}  # regimes not re-run keep their last numbers
    for regime in args.regimes:
        wall = None if args.collect_only else run_regime(regime, args.extra)
        record(results, regime, latest_metrics(regime), wall, previous)
    results = {r: results[r] for r in REGIMES if r in results}
    (RESULTS / "paradigm_study.json").write_text(json.dumps(results, indent=2))
    (RESULTS / "paradigm_study.md").write_text(markdown(results))
    plot(results, RESULTS / "paradigm_study.png")
    print(markdown(results))


if __name__ == "__main__":
    main()
