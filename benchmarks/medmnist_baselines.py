"""Against the MedMNIST v2 baselines: joint training of the ResNet-18 tower at 28 px on the full
official training sets of BloodMNIST, OrganAMNIST, PneumoniaMNIST and RetinaMNIST, in-domain test
ACC and AUC per dataset beside the published ResNet-18 (28) numbers.

Runs ``medcl fit --config experiments/baselines/medmnist_resnet18_joint.yaml`` (``--epochs`` sets
``trainer.max_epochs``) and writes ``benchmarks/results/medmnist_baselines.{json,md,png}``.  ACC is
the argmax accuracy and AUC the macro one-vs-rest AUROC, the definitions of the ``medmnist``
package's ``Evaluator`` (checked equal on the same scores in tests/test_metric_crosschecks.py).

    python benchmarks/medmnist_baselines.py                      # 4 epochs (2,160 steps at ~2.2 steps/s on 2 idle cores) + the BatchNorm diagnostic
    python benchmarks/medmnist_baselines.py --epochs 1 --no-per-domain-bn --results /tmp/mb --runs /tmp/mb/runs -- --trainer.limit_train_batches=2 --trainer.logger=false   # smoke run
"""
from __future__ import annotations

import argparse
from pathlib import Path

import yaml

from runs import REPO, RESULTS, fmt, latest_metrics, load_results, record, run_config, write_results, save_figure

NAME = "medmnist_baselines"
CONFIG = "experiments/baselines/medmnist_resnet18_joint.yaml"
RUNS = REPO / "runs" / "baselines" / "medmnist_resnet18_joint"  # the config's trainer.default_root_dir
#: MedMNIST v2 (Yang et al., Scientific Data 2023), Table 3, ResNet-18 (28): test ACC and AUC,
#: trained 100 epochs, one model per dataset
PUBLISHED = {
    "bloodmnist": {"acc": 0.958, "auroc": 0.998},
    "organamnist": {"acc": 0.935, "auroc": 0.997},
    "pneumoniamnist": {"acc": 0.854, "auroc": 0.944},
    "retinamnist": {"acc": 0.524, "auroc": 0.717},
}


def per_domain_bn(checkpoint: Path, tasks, batches: int = 20) -> dict:
    """A diagnostic: each dataset's test ACC / AUC after re-estimating every BatchNorm's running
    statistics on that dataset's training images alone (AdaBN, Li et al. 2016; ``batches`` of 256).

    Joint training runs one forward per dataset, so the shared running statistics end up a mixture
    of four very different image populations (RGB microscopy, grayscale CT, X-ray, fundus); this
    measures what that mixture costs at test time (torch's ``swa_utils.update_bn`` re-estimates them).
    """
    import itertools

    import torch
    from torch.optim.swa_utils import update_bn

    from data_modules import MedMNISTDataModule
    from framework.metrics.evaluation import evaluate_head
    from framework.paradigms import JointModule

    class OneTask(torch.nn.Module):  # update_bn calls model(images): route them through one task
        def __init__(self, model, task: str) -> None:
            super().__init__()
            self.model, self.task = model, task

        def forward(self, images):
            return self.model(images, self.task)

    import pytorch_lightning as pl

    pl.seed_everything(0, verbose=False)  # the run seed: the loaders draw the same 20 batches every time
    model = JointModule.load_from_checkpoint(str(checkpoint), map_location="cpu").model
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    out = {}
    for task in tasks:
        dm = MedMNISTDataModule(task, data_dir=str(REPO.parent / "shared" / "data" / "medmnist"), batch_size=256, eval_batch_size=500)
        dm.setup("fit")
        dm.setup("test")
        model.load_state_dict(saved)
        with torch.no_grad():
            update_bn((b["image"] for b in itertools.islice(dm.loader("train", keyed=False), batches)), OneTask(model, task))
        model.eval()
        values = evaluate_head(model, model.head(task), dm.loader("test"), task, torch.device("cpu"))
        out[task] = {"acc": values["acc"], "auroc": values.get("auroc")}
        print(f"{task}: with its own BatchNorm statistics ACC {out[task]['acc']:.3f} AUC {out[task]['auroc']:.3f}", flush=True)
    return out


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
    bn = r.get("per_domain_bn")
    if bn:
        lines += [
            "", "**Diagnostic: the same model with each dataset's own BatchNorm statistics.** Joint training runs one forward per "
            "dataset, so the ResNet's shared BatchNorm running statistics are a mixture of four very different image populations. "
            "Re-estimating them on 20 batches of 256 training images of the dataset alone (AdaBN), weights unchanged:", "",
            "| dataset | ACC, shared statistics | ACC, its own statistics | AUC, shared | AUC, its own | published ACC |", "|---|---|---|---|---|---|",
        ]
        for task, row in r["table"].items():
            own = bn.get(task, {})
            lines.append(f"| {task} | {fmt(row['acc'])} | {fmt(own.get('acc'))} | {fmt(row['auroc'])} | {fmt(own.get('auroc'))} | {fmt((row['published'] or {}).get('acc'))} |")
        lines += ["", "MedCL keeps one set of BatchNorm statistics per model, so the shipped numbers are those of the first table; "
                  "per-task BatchNorm statistics are not built yet. ViT towers (LayerNorm) do not have this problem."]
    lines += ["", f"Wall time: {fmt(r.get('wall_time_s'), 0)} s (shared with other jobs part of the time: not a timing)."]
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
    parser.add_argument("--runs", type=Path, default=RUNS,
                        help="the run folder (trainer.default_root_dir; default: the config's). Another folder also needs "
                             "`-- --trainer.logger=false` or loggers of your own, whose folders are the config's")
    parser.add_argument("--per-domain-bn", action=argparse.BooleanOptionalAction, default=True,
                        help="also score each dataset with its own BatchNorm statistics (a diagnostic, see per_domain_bn)")
    parser.add_argument("extra", nargs="*", help="extra CLI overrides, after --")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs expected >= 1, found {args.epochs}")
    wall = None
    if not args.collect_only:
        root = [] if args.runs == RUNS else ["--trainer.default_root_dir", str(args.runs)]
        wall = run_config(CONFIG, ["--trainer.max_epochs", str(args.epochs), *root, *args.extra], label=f"{NAME}, {args.epochs} epochs")
    runs: dict = {}
    result = record(runs, "joint", latest_metrics(args.runs), wall)
    config = REPO / result["run"] / "config.yaml"  # the epochs the run really used (also with --collect-only)
    epochs = yaml.safe_load(config.read_text())["trainer"]["max_epochs"] if config.is_file() else args.epochs
    wall_time = result["wall_time_s"] if result["wall_time_s"] is not None else load_results(NAME).get("wall_time_s")  # --collect-only keeps the measured one
    out = {"epochs": epochs, "wall_time_s": wall_time, "run": result["run"], "table": table(result)}
    checkpoint = REPO / result["run"] / "checkpoints" / "last.ckpt"
    if args.per_domain_bn and checkpoint.is_file():
        out["per_domain_bn"] = per_domain_bn(checkpoint, result["tasks"])
    write_results(args.results, NAME, out, markdown, plot)


if __name__ == "__main__":
    main()
