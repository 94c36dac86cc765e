"""Strategy comparison on Blood -> OrganA -> Pneumonia -> Retina: every config in
experiments/strategies/ on one documented subset (experiments/streams/four_medmnist.yaml).

Writes ``benchmarks/results/strategies.{json,md,png}``: final accuracy per domain, average accuracy,
BWT, FWT, forgetting, the cross-domain score (a SHIFTED COPY of the Blood test subset), secondary
metrics (mean AUC, mean balanced accuracy) and wall-clock time, with joint training as the upper
bound and naive fine-tuning as the lower bound.

    python benchmarks/strategies.py                          # every strategy (~15 min on 2 CPU cores)
    python benchmarks/strategies.py --strategies naive ewc
    python benchmarks/strategies.py --collect-only           # re-read the latest finished runs
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean

from runs import REPO, RESULTS, fmt, latest_metrics, load_results, record, run_config

STRATEGIES = ["joint", "naive", "replay_reservoir", "replay_class_balanced", "replay_herding", "ewc", "lwf", "replay_lwf"]
BOUNDS = {"joint": "upper bound", "naive": "lower bound"}


def summary(result: dict) -> dict:
    """The table's numbers from one run's continual_metrics.json."""
    last = len(result["accuracy_matrix"]) - 1
    secondary = result.get("secondary", {})
    avg = lambda metric: mean(v for v in secondary[metric][last] if v is not None) if metric in secondary else None  # noqa: E731
    cross = result.get("cross_domain", {}).get("bloodmnist_shifted", {})
    return {
        "final": dict(zip(result["tasks"], result["accuracy_matrix"][-1])),
        "average_accuracy": result["average_accuracy"],
        "bwt": result.get("bwt"),
        "fwt": result.get("fwt"),
        "forgetting": result["forgetting"],
        "mean_auroc": avg("auroc"),
        "mean_balanced_acc": avg("balanced_acc"),
        "bloodmnist_shifted": (cross.get("scores") or [None])[-1],
    }


def markdown(results: dict) -> str:
    tasks = next(iter(results.values()))["tasks"]
    lines = [
        "# Strategies: BloodMNIST -> OrganAMNIST -> PneumoniaMNIST -> RetinaMNIST", "",
        "One subset for every strategy (experiments/streams/four_medmnist.yaml): 1,000 seeded training images per domain,",
        "test subsets of 2,000 (Blood, OrganA) and the full test sets (Pneumonia 624, Retina 400); medcl-vit-tiny from",
        "scratch, 3 epochs per experience, seed 0, 2 CPU threads.  Accuracy on the test split.  FWT: zero-shot score of a",
        "task (from its class prompts) just before it is trained minus a random-init reference model's.  bloodmnist_shifted:",
        "the Blood head on a SHIFTED COPY of the Blood test subset (synthetic shift, labelled).", "",
        "| strategy | " + " | ".join(tasks) + " | avg acc | BWT | FWT | forgetting | mean AUC | mean bal. acc | blood shifted | wall (s) |",
        "|---|" + "---|" * (len(tasks) + 8),
    ]
    for name, r in results.items():
        s = r["summary"]
        label = f"{name} ({BOUNDS[name]})" if name in BOUNDS else name
        lines.append(
            f"| {label} | " + " | ".join(fmt(s["final"][t]) for t in tasks)
            + f" | {fmt(s['average_accuracy'])} | {fmt(s['bwt'])} | {fmt(s['fwt'])} | {fmt(s['forgetting'])}"
            + f" | {fmt(s['mean_auroc'])} | {fmt(s['mean_balanced_acc'])} | {fmt(s['bloodmnist_shifted'])} | {fmt(r.get('wall_time_s'), 0)} |"
        )
    lines += ["", "Joint training has one experience, so BWT, FWT and forgetting do not apply (n/a)."]
    return "\n".join(lines) + "\n"


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(results)
    keys = [("average_accuracy", "avg acc"), ("bwt", "BWT"), ("fwt", "FWT"), ("forgetting", "forgetting")]
    x = np.arange(len(names))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(7, 1.1 * len(names) + 2), 3.8))
    for k, (key, label) in enumerate(keys):
        values = [results[n]["summary"][key] or 0.0 for n in names]
        ax.bar(x + (k - (len(keys) - 1) / 2) * width, values, width, label=label)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_title("Blood -> OrganA -> Pneumonia -> Retina: strategies")
    ax.legend(fontsize=8, ncols=4, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--collect-only", action="store_true", help="do not train; read the latest finished runs")
    parser.add_argument("extra", nargs="*", help="extra CLI overrides passed to every run, after --")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "strategies.json"
    results = load_results("strategies")
    for name in args.strategies:
        wall = None if args.collect_only else run_config(f"experiments/strategies/{name}.yaml", args.extra, label=name)
        path = latest_metrics(REPO / "runs" / "strategies" / name)
        result = record(results, name, path, wall)
        result["summary"] = summary(result)
        out.write_text(json.dumps(results, indent=2))  # after every strategy: an interrupted study keeps what finished
    ordered = {n: results[n] for n in STRATEGIES if n in results}
    (RESULTS / "strategies.md").write_text(markdown(ordered))
    plot(ordered, RESULTS / "strategies.png")
    print(markdown(ordered))


if __name__ == "__main__":
    main()
