"""Growth across resolutions (issue 22, item 4): the 28-px quickstart model grows Kvasir-SEG at 64 px.

Acceptance: growing the 28-px quickstart (tiny ViT, BloodMNIST -> OrganAMNIST) into Kvasir-SEG at
its native 64 px must come within 0.03 test Dice of Kvasir trained from scratch at 64 px on the same
tower with the same budget, with the old tasks unchanged.  Runs, each as ``medcl fit``:

* ``quickstart``  — ``experiments/quickstart.yaml`` (skipped with ``--quickstart-ckpt``);
* ``growth``      — ``experiments/growth/quickstart_to_kvasir_64.yaml``: ``init_from`` the quickstart's
  ``last.ckpt`` (its model after the last experience), backbone + old heads frozen, a LoRA for the
  new modality; the Kvasir task runs at 64 px on the 28-px tower (position embeddings resampled
  7x7 -> 16x16), the old tasks are re-tested at 28 px;
* ``scratch``     — ``experiments/tasks/kvasir_seg_vit64.yaml``: the same tower built natively at
  64 px, trained from scratch on Kvasir alone (all of it trainable), same epochs, batch, lr, head;
* ``pinned_28``   — optional reference (``--pinned-28``): the growth run with the Kvasir task pinned
  to ``image_size: 28`` (images downsampled to 28 px, the decoder's logits up-sampled back to 64 px:
  Dice is scored on the 64-px masks as for the others): what a 28-px tower did before item 4;
* variants of the growth run, if asked (``--variants``): ``lora16`` (LoRA r=16, alpha 32) and
  ``unfrozen_backbone`` (``freeze: old_heads``: the shared tower trains too, so the old tasks move).

Scores: Kvasir test Dice / IoU from each run's ``continual_metrics.json`` (experience-end row), and
Kvasir val Dice re-measured from the run's ``last.ckpt`` (to choose among variants without looking at
the test split); the old tasks' test accuracy in the quickstart's final row (before) and in the
growth run's final row (after).  Writes ``benchmarks/results/growth_resolution.{json,md}`` (updated
after every run; runs not re-run keep their earlier results).

    python benchmarks/growth_resolution.py                                  # everything, 8 Kvasir epochs
    python benchmarks/growth_resolution.py --quickstart-ckpt runs/quickstart/version_0/checkpoints/last.ckpt --pinned-28
    python benchmarks/growth_resolution.py --quickstart-ckpt ... --only lora16 --variants lora16   # one more variant
    python benchmarks/growth_resolution.py --markdown-only
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import yaml

from runs import REPO, RESULTS, cpu_model, fmt, latest_metrics, record, run_config

NAME = "growth_resolution"
QUICKSTART = "experiments/quickstart.yaml"
GROWTH = "experiments/growth/quickstart_to_kvasir_64.yaml"
SCRATCH = "experiments/tasks/kvasir_seg_vit64.yaml"
RUNS = REPO / "runs" / "benchmarks" / NAME
TASK = "kvasir_seg"
OLD_TASKS = ("bloodmnist", "organamnist")
TARGET_GAP = 0.03
#: growth-run variants: extra CLI overrides on top of GROWTH
VARIANTS = {
    "lora16": ["--model.init_args.lora", json.dumps({"r": 16, "alpha": 32})],
    "unfrozen_backbone": ["--model.init_args.freeze", "old_heads"],
}
QUIET = ["--trainer.logger=false", "--trainer.enable_progress_bar=false"]


def kvasir_domain(pinned: Optional[int] = None) -> Dict[str, Any]:
    """The Kvasir domain of the growth config (``image_size`` pinned if asked)."""
    config = yaml.safe_load((REPO / GROWTH).read_text())
    domain = json.loads(json.dumps(config["data"]["init_args"]["domains"][0]))
    if pinned is not None:
        domain["init_args"]["image_size"] = pinned
    return domain


def run_folder(metrics: Path) -> Path:
    return Path(metrics).resolve().parent


def val_dice(checkpoint: Path, domain: Dict[str, Any]) -> Dict[str, float]:
    """Kvasir val Dice / IoU of a run's final model (``last.ckpt``), for choosing among variants."""
    import torch

    from data_modules import SegmentationDataModule
    from framework.paradigms import ContinualModule

    module = ContinualModule.load_from_checkpoint(str(checkpoint), map_location="cpu")
    module.eval()
    dm = SegmentationDataModule(**domain["init_args"])
    dm.setup("fit")
    with torch.no_grad():
        values = module.evaluate(TASK, dm.loader("val"))
    return {"val_dice": float(values["dice"]), "val_iou": float(values["iou"]),
            "kvasir_image_size": list(module.task_specs[TASK].image_size or ()),
            "tower_native_size": list(getattr(module.model.backbone, "image_size", ()) or ())}


def summarize(metrics: Path, wall: Optional[float], domain: Optional[Dict[str, Any]], epochs: Optional[int]) -> Dict[str, Any]:
    """The numbers this benchmark reports from one run's ``continual_metrics.json`` (+ its ``last.ckpt``)."""
    raw: Dict[str, Any] = {}
    result = record(raw, "run", metrics, wall)
    final = dict(zip(result["tasks"], result["accuracy_matrix"][-1]))
    first = dict(zip(result["tasks"], result["accuracy_matrix"][0]))
    out: Dict[str, Any] = {"run": result["run"], "wall_time_s": wall, "epochs": epochs, "tasks": result["tasks"],
                           "final_row": final, "trainable_parameters": result.get("trainable_parameters")}
    if -1 in result.get("experiences", []):  # an init_from run: its first row re-tests the loaded model
        out["start_row"] = first
    if TASK in final:
        details = json.loads(Path(metrics).read_text())["details"][str(result["experiences"][-1])][TASK]
        out["test_dice"], out["test_iou"] = details["dice"], details["iou"]
        checkpoint = run_folder(metrics) / "checkpoints" / "last.ckpt"
        if domain is not None and checkpoint.is_file():
            out.update(val_dice(checkpoint, domain))
    return out


def config_epochs(metrics: Path) -> Optional[int]:
    config = run_folder(metrics) / "config.yaml"
    return yaml.safe_load(config.read_text())["trainer"]["max_epochs"] if config.is_file() else None


def logged_wall(metrics: Path) -> Optional[float]:
    """Wall time of a run not run here, from its ``medcl_run.json`` (first fit command)."""
    path = run_folder(metrics) / "medcl_run.json"
    if not path.is_file():
        return None
    from datetime import datetime

    command = json.loads(path.read_text())["commands"][0]
    parse = lambda s: datetime.strptime(s, "%Y-%m-%d %H:%M:%S")  # noqa: E731
    return (parse(command["ended"]) - parse(command["started"])).total_seconds() if command.get("ended") else None


def markdown(r: Dict[str, Any]) -> str:
    runs = r["runs"]
    scratch = runs.get("scratch", {})
    lines = [
        "# Growth across resolutions: 28-px quickstart -> Kvasir-SEG at 64 px", "",
        f"`python benchmarks/growth_resolution.py {' '.join(r.get('argv', []))}` (the latest invocation) — CPU: {r['cpu']}, "
        f"{r['threads']} torch threads (2 cores shared with other jobs: see each run's load average; the wall times are upper "
        "bounds, comparable only at a similar load).  Tower `medcl-vit-tiny` "
        "(ViT, 4 layers, width 128, patch 4) from scratch, nothing downloaded; Kvasir-SEG 798/100/100 images at 64 px, "
        f"batch 16, AdamW lr 1e-3, seed 0; **{r['epochs']} Kvasir epochs** for every Kvasir run.", "",
        "## Kvasir-SEG (64-px masks)", "",
        "| run | Kvasir runs at | tower native | trainable params | val Dice | test Dice | test IoU | test Dice gap to scratch | wall s | load avg (1 min) start, end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    labels = {"growth": "growth (init_from quickstart, backbone+old_heads frozen, LoRA r=8)",
              "lora16": "growth variant: LoRA r=16",
              "unfrozen_backbone": "growth variant: freeze old_heads only (tower trains)",
              "pinned_28": "reference: growth with Kvasir pinned to 28 px",
              "scratch": "scratch (Kvasir alone, all trainable)"}
    for name in ("scratch", "growth", "lora16", "unfrozen_backbone", "pinned_28"):
        row = runs.get(name)
        if not row or "test_dice" not in row:
            continue
        params = (row.get("trainable_parameters") or {}).get("0", {}).get("total")
        gap = None if name == "scratch" or "test_dice" not in scratch else scratch["test_dice"] - row["test_dice"]
        size = lambda s: f"{s[0]} px" if s else "n/a"  # noqa: E731
        lines.append(
            f"| {labels[name]} | {size(row.get('kvasir_image_size'))} | {size(row.get('tower_native_size'))} | "
            f"{params if params is not None else 'n/a'} | {fmt(row.get('val_dice'))} | {fmt(row['test_dice'])} | {fmt(row['test_iou'])} | "
            f"{'—' if name == 'scratch' else fmt(gap, 4)} | {fmt(row.get('wall_time_s'), 0)} | "
            f"{', '.join(str(x) for x in row.get('load_average_1min') or []) or 'n/a'} |")
    lines += ["", f"Gap = scratch test Dice - run test Dice (target: <= {TARGET_GAP}).  Val Dice: the run's last.ckpt "
              "re-scored on the val split (the only score used to choose a variant)."]
    verdicts = r.get("verdicts", {})
    if verdicts:
        lines += ["", *[f"* {name}: {v}" for name, v in verdicts.items()]]
    before = r.get("old_tasks_before") or {}
    old_rows = [(name, runs[name]) for name in ("growth", "lora16", "unfrozen_backbone", "pinned_28") if name in runs and "final_row" in runs[name]]
    if old_rows:
        lines += ["", "## Old tasks (28 px, demo test splits, accuracy)", "",
                  "| run | task | before: quickstart final row | start row of the growth run (re-tested) | after growth | after - before |",
                  "|---|---|---|---|---|---|"]
        for name, row in old_rows:
            for task in OLD_TASKS:
                b, s, a = before.get(task), (row.get("start_row") or {}).get(task), row["final_row"].get(task)
                ref = b if b is not None else s
                lines.append(f"| {name} | {task} | {fmt(b, 4)} | {fmt(s, 4)} | {fmt(a, 4)} | "
                             f"{'n/a' if a is None or ref is None else f'{a - ref:+.4f}'} |")
    qs = runs.get("quickstart", {})
    lines += ["", f"Quickstart: `{qs.get('run', 'n/a')}` ({qs.get('epochs', 'n/a')} epochs, {fmt(qs.get('wall_time_s'), 0)} s"
              f"{', reused, not run here' if qs.get('reused') else ''})."]
    lines += [f"Runs: " + ", ".join(f"{k}: `{v['run']}`" for k, v in runs.items() if v.get("run"))]
    for note in r.get("notes", []):
        lines += ["", note]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8, help="Kvasir epochs of every Kvasir run (default 8)")
    parser.add_argument("--quickstart-ckpt", type=Path, help="grow this quickstart checkpoint instead of running the quickstart")
    parser.add_argument("--pinned-28", action="store_true", help="also run the reference with Kvasir pinned to 28 px")
    parser.add_argument("--variants", nargs="*", default=[], choices=sorted(VARIANTS), help="growth variants to run too")
    parser.add_argument("--only", nargs="*", help="run only these (quickstart, growth, scratch, pinned_28, variants); the rest keep earlier results")
    parser.add_argument("--markdown-only", action="store_true", help="rewrite the markdown from the json")
    parser.add_argument("--runs", type=Path, default=RUNS, help="folder of the runs (default runs/benchmarks/growth_resolution)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("extra", nargs="*", help="extra CLI overrides for every run, after --")
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs expected >= 1, found {args.epochs}")
    os.chdir(REPO)
    os.environ.setdefault("WANDB_MODE", "offline")
    import torch

    stored = args.results / f"{NAME}.json"
    result: Dict[str, Any] = json.loads(stored.read_text()) if stored.is_file() else {}
    for key in ("load_average_start", "load_average_end"):  # written by an earlier version of this script
        result.pop(key, None)
    result.setdefault("runs", {})
    result.setdefault("notes", [])
    result.setdefault("verdicts", {})
    result.update(cpu=cpu_model(), threads=torch.get_num_threads())

    def save() -> None:
        args.results.mkdir(parents=True, exist_ok=True)
        (args.results / f"{NAME}.json").write_text(json.dumps(result, indent=2))
        (args.results / f"{NAME}.md").write_text(markdown(result))

    if args.markdown_only:
        save()
        print(markdown(result))
        return
    import sys

    result.update(argv=sys.argv[1:], epochs=args.epochs)
    wanted = ["quickstart", "growth", "scratch", *args.variants, *(["pinned_28"] if args.pinned_28 else [])]
    todo: List[str] = [n for n in wanted if args.only is None or n in args.only]
    epochs = ["--trainer.max_epochs", str(args.epochs), "--model.init_args.epochs_per_experience", str(args.epochs)]

    def folder(name: str) -> List[str]:
        return ["--trainer.default_root_dir", str(args.runs / name)]

    # the quickstart: run, or the given checkpoint
    if args.quickstart_ckpt is not None:
        checkpoint = args.quickstart_ckpt.resolve()
        metrics = checkpoint.parent.parent / "continual_metrics.json"
        if "quickstart" in todo and metrics.is_file():
            result["runs"]["quickstart"] = {**summarize(metrics, logged_wall(metrics), None, config_epochs(metrics)), "reused": True}
    else:
        if "quickstart" in todo:
            wall = run_config(QUICKSTART, [*folder("quickstart"), *QUIET, *args.extra], label=f"{NAME}: quickstart")
            metrics = latest_metrics(args.runs / "quickstart")
            result["runs"]["quickstart"] = summarize(metrics, wall, None, config_epochs(metrics))
        checkpoint = run_folder(latest_metrics(args.runs / "quickstart")) / "checkpoints" / "last.ckpt"
    qs = result["runs"].get("quickstart")
    result["quickstart_ckpt"] = str(checkpoint)
    result["old_tasks_before"] = {t: qs["final_row"].get(t) for t in OLD_TASKS} if qs else None
    save()

    plans = {
        "growth": (GROWTH, [], kvasir_domain()),
        "scratch": (SCRATCH, [], kvasir_domain()),
        "pinned_28": (GROWTH, ["--data.init_args.domains", json.dumps([kvasir_domain(28)])], kvasir_domain(28)),
        **{name: (GROWTH, VARIANTS[name], kvasir_domain()) for name in VARIANTS},
    }
    for name in todo:
        if name == "quickstart":
            continue
        config, overrides, domain = plans[name]
        grow = ["--model.init_args.init_from", str(checkpoint)] if config == GROWTH else []
        load = round(os.getloadavg()[0], 2)
        wall = run_config(config, [*grow, *epochs, *overrides, *folder(name), *QUIET, *args.extra], label=f"{NAME}: {name}")
        metrics = latest_metrics(args.runs / name)
        result["runs"][name] = summarize(metrics, wall, domain, config_epochs(metrics))
        result["runs"][name]["load_average_1min"] = [load, round(os.getloadavg()[0], 2)]  # at the start and the end of the run
        scratch = result["runs"].get("scratch", {}).get("test_dice")
        result["verdicts"] = {
            k: (f"test Dice gap {scratch - v['test_dice']:+.4f} to scratch: "
                f"{'within' if scratch - v['test_dice'] <= TARGET_GAP else 'MISSES'} the {TARGET_GAP} target")
            for k, v in result["runs"].items() if k not in ("scratch", "quickstart") and "test_dice" in v and scratch is not None
        }
        save()
    print(markdown(result))


if __name__ == "__main__":
    main()
