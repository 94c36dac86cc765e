"""Benchmark: does the second channel help?  UNICON stage 4 (CT + PET, new patch embedding + LoRA)
against its CT-only baseline, at an equal budget, for several CT lesion contrasts and seeds.

SEMI-SYNTHETIC data (``data_modules/pet_ct.py``): real OrganAMNIST CT slices with a synthetic
lesion of contrast ``ct_contrast`` and a synthetic PET channel.  Both runs grow the same stage-3
checkpoint of ``make unicon`` with the configs ``experiments/unicon/04_new_modality.yaml`` and
``04b_ct_only_baseline.yaml``, changing only ``ct_contrast`` and the data/training seed; the CT
channel and the masks are identical between the two.

Writes ``benchmarks/results/pet_ct_channels.{json,md}``.

    make unicon                                   # once: writes runs/unicon/checkpoints/03_segmentation.ckpt
    python benchmarks/pet_ct_channels.py          # 0.08 and 0.25 contrast, seed 0 (~10 min on 2 CPU cores)
    python benchmarks/pet_ct_channels.py --contrasts 0.25 --seeds 1 --keep   # add rows to the results file

``seed`` sets the lesion draw, the training subset and the training seed.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))
os.environ.setdefault("WANDB_MODE", "offline")
CONFIGS = {"ct+pet": "experiments/unicon/04_new_modality.yaml", "ct only": "experiments/unicon/04b_ct_only_baseline.yaml"}


def run(config: str, contrast: float, seed: int, init_from: Path, workdir: Path) -> dict:
    """One stage-4 run; returns its task's test Dice and IoU, trainable parameters and seconds."""
    from framework.cli import run_cli
    from framework.callbacks.continual_eval import METRICS_JSON

    from config_files import load_config  # benchmarks/ is the script's folder

    data = load_config(REPO / config)  # the callbacks it names by path, inlined: the copy is written elsewhere
    domain = data["data"]["init_args"]["domains"][0]["init_args"]
    domain.update(ct_contrast=contrast, seed=seed, subset_seed=seed)
    data["seed_everything"] = seed
    data["model"]["init_args"]["init_from"] = str(init_from)
    trainer = data["trainer"]
    name = f"{Path(config).stem}_c{contrast}_s{seed}"
    trainer.update(default_root_dir=str(workdir / name), enable_progress_bar=False)
    trainer["logger"] = [{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(workdir), "name": name}}]
    trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("ModelCheckpoint")]
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    start = time.time()
    cli = run_cli(["fit", "--config", str(path), "--trainer.enable_checkpointing", "false"])
    result = json.loads((Path(cli.trainer.log_dir) / METRICS_JSON).read_text())
    task = result["experience_tasks"][-1][0]
    details = result["details"][str(result["experiences"][-1])][task]
    counts = result["trainable_parameters"]
    return {
        "dice": details["dice"], "iou": details["iou"], "seconds": round(time.time() - start, 1),
        "trainable_parameters": counts[max(counts, key=int)]["total"],
    }


def markdown(results: dict) -> str:
    lines = [
        "SEMI-SYNTHETIC lesions on real OrganAMNIST CT slices (data_modules/pet_ct.py); test Dice, 1,000 test images,",
        "each run grows the same stage-3 checkpoint of `make unicon` for 6 epochs on 3,000 training images.",
        "",
        "| CT lesion contrast | seed | CT + PET Dice | CT only Dice | difference |",
        "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        a, b = row["ct+pet"]["dice"], row["ct only"]["dice"]
        lines.append(f"| {row['contrast']} | {row['seed']} | {a:.3f} | {b:.3f} | {a - b:+.3f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contrasts", type=float, nargs="+", default=[0.08, 0.25])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--keep", action="store_true", help="keep the other rows of an earlier results file")
    parser.add_argument("--init-from", type=Path, default=REPO / "runs/unicon/checkpoints/03_segmentation.ckpt")
    args = parser.parse_args()
    if not args.init_from.is_file():
        sys.exit(f"pet_ct_channels.py: {args.init_from} not found; run `make unicon` first (it writes the stage-3 checkpoint)")
    os.chdir(REPO)  # the configs use repository-relative data paths
    results = {"init_from": str(args.init_from), "rows": []}
    saved = RESULTS / "pet_ct_channels.json"
    if args.keep and saved.is_file():  # add to earlier rows; a re-run (contrast, seed) replaces its row
        results["rows"] = [r for r in json.loads(saved.read_text())["rows"] if (r["contrast"], r["seed"]) not in
                           {(c, s) for c in args.contrasts for s in args.seeds}]
    RESULTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for contrast in args.contrasts:
            for seed in args.seeds:
                row = {"contrast": contrast, "seed": seed}
                for label, config in CONFIGS.items():
                    row[label] = run(config, contrast, seed, args.init_from, Path(tmp))
                    print(f"contrast {contrast} seed {seed} {label}: Dice {row[label]['dice']:.4f}", flush=True)
                results["rows"].append(row)
                results["rows"].sort(key=lambda r: (r["contrast"], r["seed"]))
                (RESULTS / "pet_ct_channels.json").write_text(json.dumps(results, indent=2))
                (RESULTS / "pet_ct_channels.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
