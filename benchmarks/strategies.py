"""Strategy comparison on Blood -> OrganA -> Pneumonia -> Retina: every config in
experiments/strategies/ on one documented subset (experiments/streams/four_medmnist.yaml), over seeds.

Writes ``benchmarks/results/strategies.{json,md,png}``: per strategy, mean ± sample std over seeds of
the final accuracy per domain, average accuracy, BWT, FWT, forgetting, the cross-domain score (a
SHIFTED COPY of the Blood test subset), secondary metrics (mean AUC, mean balanced accuracy) and
wall-clock time, with joint training as the upper bound and naive fine-tuning as the lower bound.
A (strategy, seed) already stored is skipped, so an interrupted study resumes where it stopped.

    python benchmarks/strategies.py                               # every strategy, seeds 0 1 2 (hours on 2 CPU cores)
    python benchmarks/strategies.py --strategies der l2p --seeds 0 1 2
    python benchmarks/strategies.py --collect-only                # rewrite the tables from the stored runs
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean
from typing import Any, Dict

from paradigm_study import mean_std
from runs import REPO, RESULTS, cpu_model, fmt_mean_std, latest_metrics, load_results, record, run_config

STRATEGIES = ["joint", "naive", "replay_reservoir", "replay_class_balanced", "replay_herding", "ewc", "lwf", "replay_lwf", "der", "l2p"]
BOUNDS = {"joint": "upper bound", "naive": "lower bound"}
#: rows that do not train medcl-vit-tiny from scratch
NOTES = {"l2p": "frozen shipped pretrained model"}
KEYS = ["average_accuracy", "bwt", "fwt", "forgetting", "mean_auroc", "mean_balanced_acc", "bloodmnist_shifted", "wall_time_s"]


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


def aggregate(runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Per strategy, mean ± std over seeds of every :data:`KEYS` entry and of each domain's final accuracy."""
    out = {}
    for name, by_seed in runs.items():
        summaries = [{**r["summary"], "wall_time_s": r.get("wall_time_s")} for r in by_seed.values()]
        tasks = list(summaries[0]["final"])
        out[name] = {
            "seeds": sorted(int(k) for k in by_seed),
            **{key: mean_std([x.get(key) for x in summaries]) for key in KEYS},
            "final": {t: mean_std([x["final"][t] for x in summaries]) for t in tasks},
        }
    return out



def markdown(agg: Dict[str, Any], cpus: list) -> str:
    tasks = list(next(iter(agg.values()))["final"])
    lines = [
        "# Strategies: BloodMNIST -> OrganAMNIST -> PneumoniaMNIST -> RetinaMNIST", "",
        "One subset for every strategy (experiments/streams/four_medmnist.yaml): 1,000 seeded training images per domain,",
        "test subsets of 2,000 (Blood, OrganA) and the full test sets (Pneumonia 624, Retina 400); medcl-vit-tiny from",
        "scratch (l2p: MedCL's shipped pretrained model with its image tower frozen), 3 epochs per experience, 2 CPU threads.",
        "Mean ± sample std over the seeds in the `seeds` column (`--seed_everything`).  Accuracy on the test split.  FWT:",
        "zero-shot score of a task (from its class prompts) just before it is trained minus a random-init reference model's.",
        "blood shifted: the Blood head on a SHIFTED COPY of the Blood test subset (synthetic shift, labelled).",
        f"CPU: {', '.join(cpus)}.", "",
        "| strategy | seeds | " + " | ".join(tasks) + " | avg acc | BWT | FWT | forgetting | mean AUC | mean bal. acc | blood shifted | wall (s) |",
        "|---|---|" + "---|" * (len(tasks) + 8),
    ]
    for name, a in agg.items():
        label = f"{name} ({BOUNDS[name]})" if name in BOUNDS else f"{name} ({NOTES[name]})" if name in NOTES else name
        lines.append(
            f"| {label} | {','.join(map(str, a['seeds']))} | " + " | ".join(fmt_mean_std(a["final"][t]) for t in tasks)
            + " | " + " | ".join(fmt_mean_std(a[k]) for k in KEYS[:-1]) + f" | {fmt_mean_std(a['wall_time_s'], 0)} |"
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
        values = [results[n][key]["mean"] or 0.0 for n in names]
        errors = [results[n][key]["std"] or 0.0 for n in names]
        ax.bar(x + (k - (len(keys) - 1) / 2) * width, values, width, yerr=errors, capsize=2, label=label)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(x, names, rotation=20, ha="right", fontsize=8)
    ax.set_title("Blood -> OrganA -> Pneumonia -> Retina: strategies (mean ± std over seeds)")
    ax.legend(fontsize=8, ncols=4, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _stored_runs(stored: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """``{strategy: {seed: result}}``; a file written before seeds were recorded holds seed 0 of each strategy."""
    if "runs" in stored:
        return stored["runs"]
    return {name: {"0": result} for name, result in stored.items() if isinstance(result, dict) and "accuracy_matrix" in result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--strategies", nargs="+", default=STRATEGIES, choices=STRATEGIES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--collect-only", action="store_true", help="do not train; rewrite the tables from the stored runs")
    parser.add_argument("--rerun", action="store_true", help="train stored (strategy, seed) runs again (default: skip them)")
    parser.add_argument("extra", nargs="*", help="extra CLI overrides passed to every run, after --")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "strategies.json"
    runs = _stored_runs(load_results("strategies"))

    def write() -> None:
        ordered = {n: runs[n] for n in STRATEGIES if runs.get(n)}
        agg = aggregate(ordered)
        cpus = sorted({r.get("cpu") or "not recorded (an earlier session)" for by_seed in ordered.values() for r in by_seed.values()})
        out.write_text(json.dumps({"seeds": sorted({int(k) for v in ordered.values() for k in v}), "aggregate": agg, "runs": ordered}, indent=2))
        (RESULTS / "strategies.md").write_text(markdown(agg, cpus))
        plot(agg, RESULTS / "strategies.png")

    if not args.collect_only:
        for seed in args.seeds:
            for name in args.strategies:
                if str(seed) in runs.get(name, {}) and not args.rerun:
                    print(f"{name}, seed {seed}: stored in {out}, skipped (--rerun trains it again)", flush=True)
                    continue
                wall = run_config(f"experiments/strategies/{name}.yaml", ["--seed_everything", str(seed), *args.extra], label=f"{name} seed {seed}")
                by_seed = runs.setdefault(name, {})
                result = record(by_seed, str(seed), latest_metrics(REPO / "runs" / "strategies" / name), wall)
                result["summary"] = summary(result)
                result["cpu"] = cpu_model()
                write()  # after every run: an interrupted study keeps what finished
    write()
    print((RESULTS / "strategies.md").read_text())


if __name__ == "__main__":
    main()
