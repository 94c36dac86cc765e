"""Cross-task transfer to a held-back task: PneumoniaMNIST is never trained while Blood -> OrganA ->
Retina are (experiments/protocol/held_back_pneumonia.yaml).  After every experience it is scored
zero-shot from its class prompts and by a linear probe (10 training images per class), once with the
pretrained all-MiniLM-L6-v2 text tower (medcl-vit-tiny-minilm) and once with a random text tower
(medcl-vit-tiny).  Writes ``benchmarks/results/cross_task.{json,md}``.

    python benchmarks/cross_task.py                  # both text towers (~6 min on 2 CPU cores)
    python benchmarks/cross_task.py --collect-only
"""
from __future__ import annotations

import argparse
import json

from runs import REPO, RESULTS, fmt, latest_metrics, load_results, record, run_config

CONFIG = "experiments/protocol/held_back_pneumonia.yaml"
TOWERS = {"minilm": "medcl-vit-tiny-minilm", "random": "medcl-vit-tiny"}
TASK = "pneumoniamnist"


def markdown(results: dict) -> str:
    lines = [
        "# Cross-task: held-back PneumoniaMNIST (never trained)", "",
        f"Stream Blood -> OrganA -> Retina with class-balanced replay ({CONFIG}); Pneumonia scored on its full test set",
        "(624 images) after every experience: zero-shot = its class prompts through the text tower (accuracy), linear probe =",
        "scikit-learn logistic regression on frozen image features of 10 seeded training images per class. Class embeddings",
        "of the trained tasks are the frozen text tower's prompt embeddings (not learned). Seed 0, 2 CPU threads.", "",
        "| text tower | row | zero-shot acc | zero-shot AUC | probe acc | probe AUC | in-domain avg acc |",
        "|---|---|---|---|---|---|---|",
    ]
    for tower, r in results.items():
        entry = r["cross_task"][TASK]
        ref = entry["random_init"]
        lines.append(f"| {tower} | random-init reference | {fmt(ref['zero_shot'])} | | {fmt(ref['linear_probe'])} | | |")
        for i, tasks in enumerate(r["experience_tasks"]):
            zs, lp = entry["zero_shot_details"][i] or {}, entry["linear_probe_details"][i] or {}
            lines.append(
                f"| {tower} | after {'+'.join(tasks)} | {fmt(zs.get('acc'))} | {fmt(zs.get('auroc'))} | {fmt(lp.get('acc'))} "
                f"| {fmt(lp.get('auroc'))} | {fmt(r['average_accuracy_per_experience'][i])} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--towers", nargs="+", default=list(TOWERS), choices=list(TOWERS))
    parser.add_argument("--collect-only", action="store_true", help="do not train; read the latest finished runs")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "cross_task.json"
    results = load_results("cross_task")
    for tower in args.towers:
        root = REPO / "runs" / "protocol" / f"held_back_pneumonia_{tower}"
        extra = ["--model.init_args.backbone", TOWERS[tower], "--trainer.default_root_dir", str(root),
                 "--trainer.logger", json.dumps([{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(root)}}])]
        wall = None if args.collect_only else run_config(CONFIG, extra, label=f"text tower: {tower}")
        path = latest_metrics(root)
        record(results, tower, path, wall)
        out.write_text(json.dumps(results, indent=2))
    (RESULTS / "cross_task.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
