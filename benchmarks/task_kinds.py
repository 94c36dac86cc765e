"""Benchmark: the task kinds of one foundation model, on the real data in ../shared/data.

Runs, one after another, each as ``medcl fit`` on a shipped config:

* ``kvasir_seg``  — Kvasir-SEG polyp segmentation at 64 px (test Dice), then the same model on
  CVC-ClinicDB (same task, another centre; never trained on);
* ``survival``    — SEMI-SYNTHETIC prognosis on OrganAMNIST slices (test C-index beside the oracle
  C-index of the true simulated hazard);
* ``adrenalmnist3d`` / ``vesselmnist3d`` — 3D volume classification (test ACC and AUC) beside the
  published MedMNIST v2 baselines;
* ``mixed``       — one model over OrganA classification -> semi-synthetic prognosis -> Kvasir-SEG,
  continual without and with replay, and joint.

Writes ``benchmarks/results/task_kinds.json`` and ``task_kinds.md`` (updated after every run).

    python benchmarks/task_kinds.py                       # everything (~1 h on 2 CPU cores)
    python benchmarks/task_kinds.py --only kvasir_seg survival
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "offline")

#: MedMNIST v2 (Yang et al., Scientific Data 2023, Table 4): test AUC / ACC of the published baselines
PUBLISHED_3D = {
    "adrenalmnist3d": {"ResNet-18+2.5D": (0.828, 0.798), "ResNet-18+3D": (0.827, 0.721), "ResNet-18+ACS": (0.839, 0.754),
                       "ResNet-50+2.5D": (0.809, 0.770), "ResNet-50+3D": (0.828, 0.745), "ResNet-50+ACS": (0.758, 0.754),
                       "auto-sklearn": (0.828, 0.802), "AutoKeras": (0.804, 0.705)},
    "vesselmnist3d": {"ResNet-18+2.5D": (0.846, 0.877), "ResNet-18+3D": (0.874, 0.877), "ResNet-18+ACS": (0.930, 0.928),
                      "ResNet-50+2.5D": (0.877, 0.877), "ResNet-50+3D": (0.875, 0.877), "ResNet-50+ACS": (0.912, 0.858),
                      "auto-sklearn": (0.910, 0.915), "AutoKeras": (0.773, 0.894)},
}


def fit(config: str, extra=()):
    """Run ``medcl fit`` in-process; return (cli, continual_metrics.json as a dict, seconds)."""
    from framework.callbacks.continual_eval import METRICS_JSON
    from framework.cli import run_cli

    start = time.time()
    cli = run_cli(["fit", "--config", config, "--trainer.enable_progress_bar", "false", *extra])
    seconds = time.time() - start
    result = json.loads((Path(cli.trainer.log_dir) / METRICS_JSON).read_text())
    return cli, result, seconds


def final_scores(result):
    return dict(zip(result["tasks"], result["accuracy_matrix"][-1]))


def run_kvasir():
    import torch
    from torch.utils.data import ConcatDataset, DataLoader
    import functools

    from data_modules import SegmentationDataModule
    from data_modules.base import keyed_collate

    cli, result, seconds = fit("experiments/tasks/kvasir_seg.yaml")
    module = cli.model
    details = result["details"][str(result["experiences"][-1])]["kvasir_seg"]
    cvc = SegmentationDataModule(file=str(REPO.parent / "shared/data/segmentation/cvc_clinicdb_64.npz"), task_name="kvasir_seg",
                                 label_names=["polyp"], modality="endoscopy", eval_batch_size=64)
    cvc.setup()
    every = ConcatDataset([cvc.dataset(s) for s in ("train", "val", "test")])
    loader = DataLoader(every, batch_size=64, collate_fn=functools.partial(keyed_collate, task="kvasir_seg"))
    with torch.no_grad():
        on_cvc_test = module.evaluate("kvasir_seg", cvc.loader("test"))
        on_cvc_all = module.evaluate("kvasir_seg", loader)
    return {
        "config": "experiments/tasks/kvasir_seg.yaml", "epochs": cli.trainer.max_epochs, "seconds": round(seconds),
        "kvasir_test_dice": details["dice"], "kvasir_test_iou": details["iou"],
        "cvc_clinicdb_test_dice": on_cvc_test["dice"], "cvc_clinicdb_all_609_dice": on_cvc_all["dice"],
        "cvc_clinicdb_all_609_iou": on_cvc_all["iou"],
    }


def run_survival():
    cli, result, seconds = fit("experiments/tasks/organa_survival_semisynthetic.yaml")
    task = result["tasks"][0]
    return {
        "config": "experiments/tasks/organa_survival_semisynthetic.yaml", "epochs": cli.trainer.max_epochs, "seconds": round(seconds),
        "test_c_index": final_scores(result)[task], "oracle_test_c_index": result["reference"][task]["oracle_c_index"],
        "note": "SEMI-SYNTHETIC: real OrganAMNIST slices, survival simulated from the organ label",
    }


def majority_class_rate(flag: str) -> float:
    """Accuracy of always predicting the most frequent test class (the floor an accuracy must beat)."""
    import numpy as np

    with np.load(REPO.parent / "shared/data/medmnist" / f"{flag}.npz") as data:
        labels = data["test_labels"].reshape(-1)
    return float(np.bincount(labels).max() / len(labels))


def run_3d(flag: str):
    cli, result, seconds = fit(f"experiments/tasks/{flag}.yaml")
    details = result["details"][str(result["experiences"][-1])][flag]
    return {
        "config": f"experiments/tasks/{flag}.yaml", "epochs": cli.trainer.max_epochs, "seconds": round(seconds),
        "test_acc": details["acc"], "test_auc": details["auroc"], "majority_class_rate": majority_class_rate(flag),
        "published_auc_acc": PUBLISHED_3D[flag],
    }


def run_mixed():
    out = {}
    for name in ("continual", "continual_replay", "joint"):
        cli, result, seconds = fit(f"experiments/mixed/{name}.yaml")
        out[name] = {
            "config": f"experiments/mixed/{name}.yaml", "seconds": round(seconds), "tasks": result["tasks"],
            "metrics": result["metrics"], "matrix": result["accuracy_matrix"], "forgetting": result["forgetting"],
            "forgetting_per_task": result["forgetting_per_task"], "average_score": result["average_accuracy"],
            "reference": result["reference"],
        }
    return out


RUNS = {"kvasir_seg": run_kvasir, "survival": run_survival, "adrenalmnist3d": lambda: run_3d("adrenalmnist3d"),
        "vesselmnist3d": lambda: run_3d("vesselmnist3d"), "mixed": run_mixed}


def fmt(v):
    return "–" if v is None else f"{v:.3f}"


def write_markdown(results, path: Path) -> None:
    import torch

    lines = ["# Task kinds benchmark", "", f"`python benchmarks/task_kinds.py` — CPU, {torch.get_num_threads()} torch threads; "
             "tiny CLIP towers trained from scratch (nothing downloaded).", ""]
    if "kvasir_seg" in results:
        r = results["kvasir_seg"]
        lines += ["## Segmentation (Kvasir-SEG, 64 px)", "", "| test set | Dice | IoU |", "|---|---|---|",
                  f"| Kvasir-SEG test (100) | {fmt(r['kvasir_test_dice'])} | {fmt(r['kvasir_test_iou'])} |",
                  f"| CVC-ClinicDB test (84), another centre | {fmt(r['cvc_clinicdb_test_dice'])} | – |",
                  f"| CVC-ClinicDB all 609 frames, another centre | {fmt(r['cvc_clinicdb_all_609_dice'])} | {fmt(r['cvc_clinicdb_all_609_iou'])} |",
                  "", f"{r['epochs']} epochs, {r['seconds']} s (`{r['config']}`).", ""]
    if "survival" in results:
        r = results["survival"]
        lines += ["## Prognosis (SEMI-SYNTHETIC survival on OrganAMNIST slices)", "", "| | C-index |", "|---|---|",
                  f"| model (test) | {fmt(r['test_c_index'])} |", f"| oracle: true simulated hazard (test) | {fmt(r['oracle_test_c_index'])} |",
                  "", f"{r['epochs']} epochs, {r['seconds']} s (`{r['config']}`).", ""]
    for flag in ("adrenalmnist3d", "vesselmnist3d"):
        if flag in results:
            r = results[flag]
            lines += [f"## {flag} (3D, slice-wise)", "", "| model | ACC | AUC |", "|---|---|---|",
                      f"| **MedCL** tiny ViT, slice-wise, {r['epochs']} epochs | **{fmt(r['test_acc'])}** | **{fmt(r['test_auc'])}** |"]
            lines += [f"| {name} (published) | {acc:.3f} | {auc:.3f} |" for name, (auc, acc) in r["published_auc_acc"].items()]
            lines += [f"| always the majority class | {r['majority_class_rate']:.3f} | 0.500 |"]
            lines += ["", f"{r['seconds']} s (`{r['config']}`). Published: MedMNIST v2 paper (Yang et al. 2023), 100 epochs.", ""]
    if "mixed" in results:
        lines += ["## One model, three kinds (OrganA classification → semi-synthetic prognosis → Kvasir-SEG)", ""]
        for name, r in results["mixed"].items():
            head = [f"{t} ({r['metrics'][t]})" for t in r["tasks"]]
            lines += [f"### {name}", "", "| after | " + " | ".join(head) + " |", "|---" * (len(head) + 1) + "|"]
            for i, row in enumerate(r["matrix"]):
                lines.append(f"| exp {i} | " + " | ".join(fmt(v) for v in row) + " |")
            lines += ["", f"forgetting: {fmt(r['forgetting'])} (per task: "
                      + ", ".join(f"{t} {fmt(v)}" for t, v in r["forgetting_per_task"].items() if v is not None)
                      + f"); average score {fmt(r['average_score'])}; {r['seconds']} s (`{r['config']}`)", ""]
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", choices=sorted(RUNS), help="run only these benchmarks")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite task_kinds.md from task_kinds.json")
    args = parser.parse_args()
    os.chdir(REPO)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "task_kinds.json"
    results = json.loads(path.read_text()) if path.is_file() else {}
    for name in [] if args.markdown_only else args.only or list(RUNS):
        print(f"=== {name}", flush=True)
        results[name] = RUNS[name]()
        path.write_text(json.dumps(results, indent=2))
        write_markdown(results, RESULTS / "task_kinds.md")
    if args.markdown_only:
        write_markdown(results, RESULTS / "task_kinds.md")
    print((RESULTS / "task_kinds.md").read_text())


if __name__ == "__main__":
    main()
