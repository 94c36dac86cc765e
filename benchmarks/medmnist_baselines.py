"""Against the MedMNIST v2 baselines: joint training of the ResNet-18 tower at 28 px on the full
official training sets of BloodMNIST, OrganAMNIST, PneumoniaMNIST and RetinaMNIST, in-domain test
ACC and AUC per dataset beside the published ResNet-18 (28) numbers.

Runs ``medcl fit --config experiments/baselines/medmnist_resnet18_joint.yaml`` (``--epochs`` sets
``trainer.max_epochs``) and writes ``benchmarks/results/medmnist_baselines.{json,md,png}``.  ACC is
the argmax accuracy and AUC the macro one-vs-rest AUROC, the definitions of the ``medmnist``
package's ``Evaluator`` (checked equal on the same scores in tests/test_metric_crosschecks.py).

    python benchmarks/medmnist_baselines.py                      # 4 epochs (~20 min on 2 idle CPU cores)
    python benchmarks/medmnist_baselines.py --epochs 1 --results /tmp/mb -- --trainer.limit_train_batches=2   # smoke run
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from runs import REPO, RESULTS, fmt, latest_metrics, record, run_config, write_results, save_figure

NAME = "medmnist_baselines"
CONFIG = "experiments/baselines/medmnist_resnet18_joint.yaml"
#: MedMNIST v2 (Yang et al., Scientific Data 2023), Table 3, ResNet-18 (28): test ACC and AUC,
#: trained 100 epochs, one model per dataset
PUBLISHED = {
    "bloodmnist": {"acc": 0.958, "auroc": 0.998},
    "organamnist": {"acc": 0.935, "auroc": 0.997},
    "pneumoniamnist": {"acc": 0.854, "auroc": 0.944},
    "retinamnist": {"acc": 0.524, "auroc": 0.717},
}


def table(result: dict) -> dict:
    """Per dataset: our ACC / AUC after the run, and the published ones."""
    final = dict(zip(result["tasks"], result["accuracy_matrix"][-1]))
    auroc = dict(zip(result["tasks"], result["secondary"]["auroc"][-1]))
    return {t: {"acc": final[t], "auroc": auroc[t], "published": PUBLISHED.get(t)} for t in result["tasks"]}


def markdown(r: dict) -> str:
    lines = [
        "# Against the MedMNIST v2 ResNet-18 (28) baselines", "",
        f"MedCL: joint training (`{CONFIG}`) of `medcl-resnet18-tiny` (timm resnet18 from scratch, 28 px) on the full official training sets of the",
        f"four datasets at once, **{r['epochs']} epochs** (an epoch = one pass over OrganAMNIST's 34,561 images, batch 64 per dataset; the smaller sets",
        "cycle), AdamW lr 1e-3, seed 0, 2 CPU threads, full official test sets.  Published: one ResNet-18 per dataset, 100 epochs",
        "(Yang et al., Scientific Data 2023, Table 3).", "",
        "| dataset | MedCL ACC | MedCL AUC | published ACC | published AUC | ACC gap | AUC gap |", "|---|---|---|---|---|---|---|",
    ]
    for task, row in r["table"].items():
        pub = row["published"] or {}
        gap = lambda k: f"{row[k] - pub[k]:+.3f}" if k in pub else "n/a"  # noqa: E731
        lines.append(f"| {task} | {fmt(row['acc'])} | {fmt(row['auroc'])} | {fmt(pub.get('acc'))} | {fmt(pub.get('auroc'))} | {gap('acc')} | {gap('auroc')} |")
    lines += ["", f"Wall time: {fmt(r.get('wall_time_s'), 0)} s."]
    return "\n".join(lines) + "\n"


def plot(r: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    tasks = list(r["table"])
    x = np.arange(len(tasks))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
    for ax, key, label in zip(axes, ("acc", "auroc"), ("test ACC", "test AUC")):
        ax.bar(x - 0.2, [r["table"][t][key] for t in tasks], 0.4, label=f"MedCL joint, {r['epochs']} epochs")
        ax.bar(x + 0.2, [(r["table"][t]["published"] or {}).get(key, 0) for t in tasks], 0.4, label="published ResNet-18 (28), 100 epochs")
        ax.set_xticks(x, [t.replace("mnist", "") for t in tasks])
        ax.set_ylim(0, 1)
        ax.set_title(label)
    axes[0].legend(fontsize=7, loc="lower left")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--collect-only", action="store_true", help="do not train; read the latest finished run")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("extra", nargs="*", help="extra CLI overrides, after --")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs expected >= 1, found {args.epochs}")
    wall = None
    if not args.collect_only:
        wall = run_config(CONFIG, ["--trainer.max_epochs", str(args.epochs), *args.extra], label=f"{NAME}, {args.epochs} epochs")
    runs: dict = {}
    result = record(runs, "joint", latest_metrics(REPO / "runs" / "baselines" / "medmnist_resnet18_joint"), wall)
    config = REPO / result["run"] / "config.yaml"  # the epochs the run really used (also with --collect-only)
    epochs = yaml.safe_load(config.read_text())["trainer"]["max_epochs"] if config.is_file() else args.epochs
    out = {"epochs": epochs, "wall_time_s": result["wall_time_s"], "run": result["run"], "table": table(result)}
    write_results(args.results, NAME, out, markdown, plot)


if __name__ == "__main__":
    main()
