"""Benchmark: a native-3D image tower against slice averaging, on AdrenalMNIST3D and VesselMNIST3D (28^3).

Both backbones train the shipped task config (``experiments/tasks/<flag>.yaml``: JointModule, learned
class embeddings, AdamW lr 1e-3, batch 32, seed 0) for the same epochs on the same training volumes;
only ``model.init_args.backbone`` differs:

* ``slice-wise`` — ``medcl-vit-tiny`` (open_clip ViT: 28 px, patch 4, width 128, 4 layers): every axial
  slice is encoded and the 28 slice embeddings are averaged (``CLIPBackbone.encode_volume``, MedCL's
  default for volumes, the "2.5D" design of the MedMNIST v2 baselines);
* ``native 3D`` — ``framework.backbone.towers.MonaiViT3D``, a custom backbone by ``class_path``: the
  same ViT shape in 3D (MONAI ``ViT``, patch 4^3, width 128, 4 layers, MLP ratio 2), a volume is one
  sequence of 343 patch tokens.

Reports test ACC and AUC on every test volume (the head's torchmetrics) and seconds per training
epoch (wall time from the start to the end of each epoch's training batches, validation off, averaged).  Writes
``benchmarks/results/native_3d.{json,md}``.

    python benchmarks/native_3d.py                  # 2 sets x 2 backbones, 3 epochs on 300 training volumes (~15 min, 2 shared CPU cores)
    python benchmarks/native_3d.py --epochs 1 --train-subset 32 --results /tmp/native3d   # smoke run
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # EpochTimes is named by class_path native_3d.EpochTimes
os.environ.setdefault("WANDB_MODE", "offline")

from config_files import load_config  # noqa: E402  (benchmarks/ is on the path from here on)
from runs import cpu_model  # noqa: E402

FLAGS = ("adrenalmnist3d", "vesselmnist3d")
BACKBONES: Dict[str, Any] = {
    "slice-wise (medcl-vit-tiny, slice embeddings averaged)": "medcl-vit-tiny",
    "native 3D (MonaiViT3D, custom class_path)": {"class_path": "framework.backbone.towers.MonaiViT3D", "init_args": {}},
}


class EpochTimes(pl.Callback):
    """Wall seconds of every training epoch (start to end of the epoch's training batches)."""

    def __init__(self) -> None:
        self.seconds: List[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)


def majority_class_rate(flag: str) -> float:
    """Test accuracy of always predicting the most frequent test class."""
    import numpy as np

    with np.load(REPO.parent / "shared/data/medmnist" / f"{flag}.npz") as data:
        labels = data["test_labels"].reshape(-1)
    return float(np.bincount(labels).max() / len(labels))


def run(flag: str, backbone: Any, epochs: int, train_subset: Optional[int], workdir: Path) -> Dict[str, Any]:
    """Train one backbone on one set; return test metrics, seconds per training epoch and tower size."""
    from framework.cli import run_cli

    config = load_config(REPO / "experiments" / "tasks" / f"{flag}.yaml")  # the files it names, inlined: the copy is written elsewhere
    model = config["model"]["init_args"]
    model["backbone"] = backbone
    domain = config["data"]["init_args"]["domains"][0]["init_args"]
    if train_subset:
        domain["train_subset"] = train_subset
    name = f"{flag}_{'custom' if isinstance(backbone, dict) else backbone}"
    trainer = config["trainer"]
    trainer.update(max_epochs=epochs, default_root_dir=str(workdir / name), enable_progress_bar=False, enable_checkpointing=False,
                   limit_val_batches=0, num_sanity_val_steps=0)
    trainer["logger"] = [{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(workdir), "name": name}}]
    trainer["callbacks"] = [{"class_path": "native_3d.EpochTimes"}]  # no experience-end evaluation, no checkpoints
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    load_before = os.getloadavg()[0]
    cli = run_cli(["fit", "--config", str(path)])
    (timer,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "EpochTimes"]
    module, stream = cli.model, cli.datamodule
    metrics = module.evaluate(flag, stream.eval_dataloader(flag, "test"))
    tower = module.model.backbone
    tower = tower.clip.visual if hasattr(tower, "clip") else tower.tower
    return {
        "backbone": backbone,
        "test_acc": metrics["acc"],
        "test_auc": metrics["auroc"],
        "test_balanced_acc": metrics["balanced_acc"],
        "seconds_per_train_epoch": sum(timer.seconds) / len(timer.seconds),
        "train_epoch_seconds": timer.seconds,
        "image_tower_parameters": sum(p.numel() for p in tower.parameters()),
        "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],  # before and after: the CPU is shared
        "train_volumes": len(stream.domain(flag).dataset("train")),
        "test_volumes": len(stream.domain(flag).dataset("test")),
    }


def markdown(result: Dict[str, Any]) -> str:
    setup = result["setup"]
    lines = [
        "# Native-3D tower vs slice averaging (MedMNIST 3D, 28^3)",
        "",
        f"`python benchmarks/native_3d.py` — CPU {setup['cpu']}, {setup['torch_threads']} torch threads (shared machine), "
        f"torch {setup['torch']}; {setup['epochs']} epochs, batch {setup['batch_size']}, AdamW lr {setup['lr']}, seed 0, "
        f"{'all' if not setup['train_subset'] else setup['train_subset']} training volumes per set, every test volume; "
        "towers trained from scratch (nothing downloaded). Seconds per training epoch: wall time of each epoch's "
        "training batches (validation off), averaged over the epochs.",
        "",
        "| set | backbone | test ACC | test balanced ACC | test AUC | s / training epoch | image-tower parameters | 1-min load before / after |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for flag, runs in result["runs"].items():
        for label, r in runs.items():
            lines.append(
                f"| {flag} | {label} | {r['test_acc']:.3f} | {r['test_balanced_acc']:.3f} | {r['test_auc']:.3f} | {r['seconds_per_train_epoch']:.1f} | "
                f"{r['image_tower_parameters'] / 1e6:.2f} M | {r['load_average_1min'][0]:.1f} / {r['load_average_1min'][1]:.1f} |"
            )
        lines.append(f"| {flag} | always the majority class | {result['majority_class_rate'][flag]:.3f} | 0.500 | 0.500 | – | – | – |")
    lines += [
        "",
        f"Training volumes: {', '.join(f'{f} {n}' for f, n in result['train_volumes'].items())}; test volumes: "
        f"{', '.join(f'{f} {n}' for f, n in result['test_volumes'].items())}. Few epochs on a CPU: the numbers compare the two "
        "designs at an equal small budget, they are not converged accuracies (MedMNIST v2 trains 100 epochs; "
        "see task_kinds.md for the published baselines). A balanced ACC of 0.500 means the model still predicts the "
        "majority class for every volume; the AUC then carries the signal.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of every run (default 3)")
    parser.add_argument("--train-subset", type=int, default=300, help="training volumes per set (0: all; default 300)")
    parser.add_argument("--flags", nargs="*", choices=FLAGS, default=list(FLAGS))
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for native_3d.{json,md}")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite native_3d.md from native_3d.json")
    args = parser.parse_args()
    os.chdir(REPO)
    if args.markdown_only:
        (args.results / "native_3d.md").write_text(markdown(json.loads((args.results / "native_3d.json").read_text())))
        print((args.results / "native_3d.md").read_text())
        return
    import torch

    config = yaml.safe_load((REPO / "experiments/tasks/adrenalmnist3d.yaml").read_text())
    result: Dict[str, Any] = {
        "setup": {
            "cpu": cpu_model(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__, "epochs": args.epochs,
            "train_subset": args.train_subset or None, "lr": config["model"]["init_args"]["lr"],
            "batch_size": config["data"]["init_args"]["domains"][0]["init_args"]["batch_size"],
        },
        "runs": {}, "majority_class_rate": {}, "train_volumes": {}, "test_volumes": {},
    }
    args.results.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="native_3d_") as tmp:
        for flag in args.flags:
            result["majority_class_rate"][flag] = majority_class_rate(flag)
            for label, backbone in BACKBONES.items():
                print(f"=== {flag}: {label}", flush=True)
                r = run(flag, backbone, args.epochs, args.train_subset or None, Path(tmp))
                result["runs"].setdefault(flag, {})[label] = r
                result["train_volumes"][flag], result["test_volumes"][flag] = r["train_volumes"], r["test_volumes"]
                (args.results / "native_3d.json").write_text(json.dumps(result, indent=2))
                (args.results / "native_3d.md").write_text(markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
