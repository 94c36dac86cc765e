"""WiSE-FT over alpha: in-domain score against zero-shot retention of the shipped model's known tasks.

Runs experiments/pretrained_start/sequential_replay.yaml (from ``pretrained: medmnist-blood-organa``) once per
``alpha`` with :class:`framework.callbacks.WiSEFT` added (``alpha`` 1 is plain fine-tuning: the callback does
nothing, so the pretrained-start study's stored sequential + replay run of the same seed is reused when
benchmarks/results/pretrained_start.json has it and no extra overrides are given), and writes ``benchmarks/results/wise_ft.{json,md,png}``: per alpha the average in-domain score after
the last experience, the known tasks' zero-shot accuracy (start, final, ZSCL transfer), and the cross-domain
scores; the plot puts in-domain score against zero-shot retention, one point per alpha.

    python benchmarks/wise_ft.py                               # alpha 0, 0.25, 0.5, 0.75, 1; seed 0
    python benchmarks/wise_ft.py --alphas 0.5 --seeds 0 1 2
    python benchmarks/wise_ft.py --results /tmp/wf -- --trainer.limit_train_batches=2   # smoke run
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List

import yaml

from paradigm_study import mean_std, pm
from pretrained_start import CROSS_DOMAINS, summary
from config_files import load_config
from runs import REPO, RESULTS, finish_study, latest_metrics, load_results, record, run_config, save_figure

NAME = "wise_ft"
CONFIG = REPO / "experiments" / "pretrained_start" / "sequential_replay.yaml"
KEYS = ["average_score", "retention_final", "retention_transfer", "retention_drop", *[f"cross_domain:{n}" for n in CROSS_DOMAINS]]


def config_for(alpha: float, folder: Path) -> Path:
    """A copy of :data:`CONFIG` with ``WiSEFT(alpha)`` and its own run folder."""
    config = load_config(CONFIG)  # its stream and callbacks inlined: the copy is written elsewhere
    root = f"runs/wise_ft/alpha_{alpha:g}"
    config["trainer"]["default_root_dir"] = root
    config["trainer"]["logger"] = [{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": "runs/wise_ft", "name": f"alpha_{alpha:g}"}}]
    config["trainer"]["callbacks"].insert(0, {"class_path": "framework.callbacks.WiSEFT", "init_args": {"alpha": alpha}})
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"alpha_{alpha:g}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def markdown(agg: Dict[str, Any], seeds: List[int]) -> str:
    lines = [
        "# WiSE-FT over alpha (sequential + replay from the shipped model)", "",
        "`python benchmarks/wise_ft.py`: experiments/pretrained_start/sequential_replay.yaml (Pneumonia -> Retina -> Kvasir-SEG ->",
        "semi-synthetic prognosis, from `pretrained: medmnist-blood-organa`) with `framework.callbacks.WiSEFT(alpha)`: after every",
        "experience the backbone becomes (1 - alpha) * pretrained + alpha * fine-tuned.  Known tasks: BloodMNIST and OrganAMNIST",
        f"(the pretraining domains), zero-shot from class prompts.  Mean ± std over seeds {', '.join(map(str, seeds))}.", "",
        "| alpha | avg in-domain score (final) | known tasks zero-shot: final | retention transfer | drop (start - final) "
        "| Pneumonia head, shifted copy | Kvasir head, CVC-ClinicDB |",
        "|---|---|---|---|---|---|---|",
    ]
    for alpha, a in agg.items():
        lines.append(
            f"| {alpha} | {pm(a['average_score'])} | {pm(a['retention_final'])} | {pm(a['retention_transfer'])} | {pm(a['retention_drop'])} "
            f"| {pm(a['cross_domain:pneumoniamnist_shifted'])} | {pm(a['cross_domain:cvc_clinicdb'])} |"
        )
    start = next(iter(agg.values()))["retention_start"]
    lines += ["", f"Known tasks' zero-shot accuracy before training (the shipped model): {pm(start)}."]
    return "\n".join(lines) + "\n"


def plot(agg: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.0))
    xs = [a["retention_final"]["mean"] for a in agg.values()]
    ys = [a["average_score"]["mean"] for a in agg.values()]
    ax.errorbar(xs, ys, xerr=[a["retention_final"]["std"] or 0 for a in agg.values()], yerr=[a["average_score"]["std"] or 0 for a in agg.values()],
                marker="o", capsize=2)
    for alpha, x, y in zip(agg, xs, ys):
        ax.annotate(f"alpha {alpha}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    start = next(iter(agg.values()))["retention_start"]["mean"]
    if start is not None:
        ax.axvline(start, ls=":", color="0.5", label="known tasks before training")
        ax.legend(fontsize=8)
    ax.set_xlabel("zero-shot accuracy on the known tasks after the stream")
    ax.set_ylabel("average in-domain score after the stream")
    ax.set_title("WiSE-FT: in-domain score vs zero-shot retention", fontsize=9)
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alphas", nargs="+", type=float, default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--collect-only", action="store_true")
    parser.add_argument("--rerun", action="store_true")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("extra", nargs="*", help="extra CLI overrides passed to every run, after --")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{NAME}.json"
    runs: Dict[str, Dict[str, Any]] = (json.loads(out.read_text()) if out.is_file() else {}).get("runs", {})

    def write() -> None:
        ordered = {a: runs[a] for a in sorted(runs, key=float)}
        agg = {}
        for alpha, by_seed in ordered.items():
            summaries = [r["summary"] for r in by_seed.values()]
            agg[alpha] = {key: mean_std([s.get(key) for s in summaries]) for key in [*KEYS, "retention_start"]}
        seeds = sorted({int(s) for by_seed in ordered.values() for s in by_seed})
        out.write_text(json.dumps({"seeds": seeds, "aggregate": agg, "runs": ordered}, indent=2))
        (args.results / f"{NAME}.md").write_text(markdown(agg, seeds))
        plot(agg, args.results / f"{NAME}.png")

    if not args.collect_only:
        for seed in args.seeds:
            for alpha in args.alphas:
                key = f"{alpha:g}"
                if str(seed) in runs.get(key, {}) and not args.rerun:
                    print(f"alpha {key}, seed {seed}: stored, skipped", flush=True)
                    continue
                reused = (load_results("pretrained_start").get("runs", {}).get("pretrained", {}).get("sequential_replay", {})
                          .get(str(seed)) if alpha == 1.0 and not args.extra else None)
                if reused is not None:  # alpha 1 is plain fine-tuning: the study's run of this seed, not trained twice
                    result = runs.setdefault(key, {})[str(seed)] = dict(reused, reused_from="pretrained_start.json: pretrained / sequential_replay")
                    result["summary"] = summary(result)
                    print(f"alpha 1, seed {seed}: the pretrained-start study's sequential + replay run, reused", flush=True)
                    write()
                    continue
                config = config_for(alpha, REPO / "runs" / "wise_ft" / "configs")
                wall = run_config(str(config), ["--seed_everything", str(seed), *args.extra], label=f"WiSE-FT alpha {key}, seed {seed}")
                result = record(runs.setdefault(key, {}), str(seed), latest_metrics(REPO / "runs" / "wise_ft" / f"alpha_{key}"), wall)
                result["summary"] = summary(result)
                write()
    finish_study(runs, out, write, args.results / f"{NAME}.md")


if __name__ == "__main__":
    main()
