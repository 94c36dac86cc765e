"""Yi et al.'s paradigm study from a pretrained start: does MedCL's shipped model help, and does rehearsal still help?

Runs every config in experiments/pretrained_start/ (specialized, joint, sequential, sequential + replay) twice
per seed: from the shipped model (``pretrained: medmnist-blood-organa``: the tiny ViT contrastively pretrained on
BloodMNIST and OrganAMNIST against the frozen MiniLM text tower) and from scratch (the same architecture,
``--model.init_args.pretrained null``: random image tower, the same pretrained MiniLM text tower).  The stream
(experiments/streams/pretrained_start.yaml) holds tasks the shipped model never saw: Pneumonia -> Retina ->
Kvasir-SEG -> semi-synthetic prognosis on Retina images, with cross-domain sets (a shifted copy of Pneumonia,
CVC-ClinicDB), a cross task (AdrenalMNIST3D, zero-shot and linear probe) and the shipped model's pretraining
domains as known tasks (zero-shot retention).

Writes ``benchmarks/results/pretrained_start.{json,md,png}``: per start and regime, mean ± std over seeds.

    python benchmarks/pretrained_start.py                                  # 4 regimes x 2 starts x 3 seeds
    python benchmarks/pretrained_start.py --regimes sequential_replay --starts pretrained --seeds 0
    python benchmarks/pretrained_start.py --collect-only                   # rewrite the tables from the stored runs
    python benchmarks/pretrained_start.py --results /tmp/ps -- --trainer.limit_train_batches=2   # smoke run
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any, Dict, List, Optional

from paradigm_study import mean_std, pm, run_root
from runs import REPO, RESULTS, finish_study, latest_metrics, record, run_config, save_figure

NAME = "pretrained_start"
REGIMES = ["specialized", "joint", "sequential", "sequential_replay"]
#: ways to keep the pretrained skill, compared from the pretrained start (``--regimes ... --starts pretrained``)
RETENTION_REGIMES = ["sequential_replay_lwf", "sequential_lora"]
STARTS = {"pretrained": [], "scratch": ["--model.init_args.pretrained", "null"]}
LABELS = {
    "specialized": "(a) specialized",
    "joint": "(b) joint",
    "sequential": "(c) sequential",
    "sequential_replay": "(d) sequential + replay (2 %)",
    "sequential_replay_lwf": "(d) + LwF",
    "sequential_lora": "(c) with a frozen backbone + LoRA",
}
CROSS_DOMAINS = ["pneumoniamnist_shifted", "cvc_clinicdb"]
CROSS_TASK = "adrenalmnist3d"
KEYS = [
    "average_score", "forgetting", "bwt", *[f"cross_domain:{n}" for n in CROSS_DOMAINS], "cross_task_zero_shot", "cross_task_probe",
    "retention_start", "retention_final", "retention_transfer", "retention_drop", "wall_time_s",
]


def summary(result: Dict[str, Any]) -> Dict[str, Any]:
    """One run's table numbers from its ``continual_metrics.json``."""
    last = lambda values: (values or [None])[-1]  # noqa: E731
    retention = result.get("zero_shot_retention") or {}
    task = (result.get("cross_task") or {}).get(CROSS_TASK) or {}
    out = {
        "final": dict(zip(result["tasks"], result["accuracy_matrix"][-1])),
        "average_score": result["average_accuracy"],
        "forgetting": result.get("forgetting"),
        "bwt": result.get("bwt"),
        "cross_task_zero_shot": last(task.get("zero_shot")),
        "cross_task_probe": last(task.get("linear_probe")),
        "retention_start": retention.get("start"),
        "retention_final": retention.get("final"),
        "retention_transfer": retention.get("transfer"),
        "retention_drop": retention.get("drop"),
        "wall_time_s": result.get("wall_time_s"),
    }
    for name in CROSS_DOMAINS:
        out[f"cross_domain:{name}"] = last(((result.get("cross_domain") or {}).get(name) or {}).get("scores"))
    return out


def aggregate(runs: Dict[str, Dict[str, Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
    """``{start: {regime: {key: mean_std, "final": {task: mean_std}, "seeds": [...]}}}``."""
    out: Dict[str, Dict[str, Any]] = {}
    for start, by_regime in runs.items():
        for regime, by_seed in by_regime.items():
            summaries = [r["summary"] for r in by_seed.values()]
            tasks = list(summaries[0]["final"])
            out.setdefault(start, {})[regime] = {
                "seeds": sorted(int(s) for s in by_seed),
                **{key: mean_std([s.get(key) for s in summaries]) for key in KEYS},
                "final": {t: mean_std([s["final"][t] for s in summaries]) for t in tasks},
            }
    return out


def differences(agg: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Pretrained minus scratch per regime, and replay minus sequential per start (means)."""
    out: Dict[str, Any] = {"pretrained_minus_scratch": {}, "replay_minus_sequential": {}}
    keys = ["average_score", *[f"cross_domain:{n}" for n in CROSS_DOMAINS], "cross_task_zero_shot", "cross_task_probe", "forgetting"]
    for regime in REGIMES + RETENTION_REGIMES:
        a, b = agg.get("pretrained", {}).get(regime), agg.get("scratch", {}).get(regime)
        if a and b:
            out["pretrained_minus_scratch"][regime] = {
                k: (a[k]["mean"] - b[k]["mean"]) if a[k]["mean"] is not None and b[k]["mean"] is not None else None for k in keys
            }
    for start, by_regime in agg.items():
        rep, seq = by_regime.get("sequential_replay"), by_regime.get("sequential")
        if rep and seq and rep["average_score"]["mean"] is not None and seq["average_score"]["mean"] is not None:
            out["replay_minus_sequential"][start] = {
                "average_score": rep["average_score"]["mean"] - seq["average_score"]["mean"],
                "forgetting": (rep["forgetting"]["mean"] or 0.0) - (seq["forgetting"]["mean"] or 0.0),
                "retention_drop": None if rep["retention_drop"]["mean"] is None or seq["retention_drop"]["mean"] is None
                else rep["retention_drop"]["mean"] - seq["retention_drop"]["mean"],
            }
    return out


def _signed(value: Optional[float]) -> str:
    return "n/a" if value is None else f"{value:+.3f}"


def markdown(agg: Dict[str, Dict[str, Any]], diff: Dict[str, Any], seeds: List[int]) -> str:
    any_regime = next(iter(next(iter(agg.values())).values()))
    tasks = list(any_regime["final"])
    lines = [
        "# Pretrained start vs from scratch: Pneumonia -> Retina -> Kvasir-SEG -> semi-synthetic prognosis (Retina)", "",
        "`python benchmarks/pretrained_start.py`; experiments/pretrained_start/ (stream: experiments/streams/pretrained_start.yaml).",
        "**pretrained**: MedCL's shipped model (`pretrained: medmnist-blood-organa`, contrastively pretrained on BloodMNIST and",
        "OrganAMNIST only); **scratch**: the same architecture with a random image tower (both use the pretrained, frozen MiniLM",
        "text tower).  No task of the stream is a pretraining domain; Blood and OrganA are scored only as *known* tasks",
        "(zero-shot retention).  1,000 training images per classification/prognosis task, all 798 Kvasir-SEG training images,",
        "3 passes over every image in every regime, AdamW lr 1e-3.  Replay: 80 exemplars (2 %), class-balanced.",
        f"Mean ± sample std over seeds {', '.join(map(str, seeds))} (`--seed_everything`).", "",
        "In-domain test scores after the last experience (acc, acc, Dice, C-index):", "",
        "| start | regime | " + " | ".join(tasks) + " | avg score | forgetting | BWT |",
        "|---|---|" + "---|" * (len(tasks) + 3),
    ]
    for start, by_regime in agg.items():
        for regime, a in by_regime.items():
            lines.append(
                f"| {start} | {LABELS.get(regime, regime)} | " + " | ".join(pm(a["final"][t]) for t in tasks)
                + f" | **{pm(a['average_score'])}** | {pm(a['forgetting'])} | {pm(a['bwt'])} |"
            )
    lines += [
        "", "Cross-domain, cross-task and zero-shot retention after the last experience:", "",
        "| start | regime | Pneumonia head on a SHIFTED COPY (acc) | Kvasir head on CVC-ClinicDB (Dice) | AdrenalMNIST3D zero-shot acc "
        "| AdrenalMNIST3D probe acc | known tasks zero-shot: start → final | retention transfer | wall (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for start, by_regime in agg.items():
        for regime, a in by_regime.items():
            lines.append(
                f"| {start} | {LABELS.get(regime, regime)} | {pm(a['cross_domain:pneumoniamnist_shifted'])} | {pm(a['cross_domain:cvc_clinicdb'])} "
                f"| {pm(a['cross_task_zero_shot'])} | {pm(a['cross_task_probe'])} | {pm(a['retention_start'])} → {pm(a['retention_final'])} "
                f"| {pm(a['retention_transfer'])} | {pm(a['wall_time_s'], 0)} |"
            )
    lines += [
        "", "Specialised learning has one model per task, so cross tasks and known tasks (one shared model) are not scored (n/a).", "",
        "## Differences of the means", "",
        "| regime | pretrained − scratch: avg score | Pneumonia shifted | CVC-ClinicDB | Adrenal zero-shot | Adrenal probe | forgetting |",
        "|---|---|---|---|---|---|---|",
    ]
    for regime, d in diff["pretrained_minus_scratch"].items():
        lines.append(
            f"| {LABELS.get(regime, regime)} | {_signed(d['average_score'])} | {_signed(d['cross_domain:pneumoniamnist_shifted'])} "
            f"| {_signed(d['cross_domain:cvc_clinicdb'])} | {_signed(d['cross_task_zero_shot'])} | {_signed(d['cross_task_probe'])} | {_signed(d['forgetting'])} |"
        )
    for start, d in diff["replay_minus_sequential"].items():
        lines.append(
            f"\nReplay minus sequential ({start}): avg score {_signed(d['average_score'])}, forgetting {_signed(d['forgetting'])}, "
            f"retention drop {_signed(d['retention_drop'])}."
        )
    return "\n".join(lines) + "\n"


def plot(agg: Dict[str, Dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = [("average_score", "avg score"), ("cross_domain:pneumoniamnist_shifted", "Pneumonia shifted"), ("cross_domain:cvc_clinicdb", "CVC-ClinicDB"),
            ("cross_task_probe", "Adrenal probe"), ("retention_final", "known tasks zero-shot")]
    fig, axes = plt.subplots(1, len(keys), figsize=(3.0 * len(keys), 3.4), sharey=True)
    for ax, (key, label) in zip(axes, keys):
        regimes = [r for r in REGIMES + RETENTION_REGIMES if any(r in by for by in agg.values())]
        x = np.arange(len(regimes))
        for k, (start, by_regime) in enumerate(agg.items()):
            means = [by_regime.get(r, {}).get(key, {}).get("mean") or 0.0 for r in regimes]
            stds = [by_regime.get(r, {}).get(key, {}).get("std") or 0.0 for r in regimes]
            ax.bar(x + (k - 0.5) * 0.38, means, 0.38, yerr=stds, capsize=2, label=start)
        ax.set_xticks(x, [LABELS[r].split(" ")[0] + ("+lwf" if r.endswith("lwf") else "+lora" if r.endswith("lora") else "") for r in regimes], fontsize=8)
        ax.set_title(label, fontsize=9)
        ax.set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.suptitle("pretrained start vs scratch (mean ± std over seeds; (a) specialized, (b) joint, (c) sequential, (d) + replay)", fontsize=9)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regimes", nargs="+", default=REGIMES, choices=REGIMES + RETENTION_REGIMES)
    parser.add_argument("--starts", nargs="+", default=list(STARTS), choices=list(STARTS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--collect-only", action="store_true", help="do not train; rewrite the tables from the stored runs")
    parser.add_argument("--rerun", action="store_true", help="train stored (start, regime, seed) runs again (default: skip them)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for pretrained_start.{json,md,png}")
    parser.add_argument("--configs", type=Path, default=REPO / "experiments" / "pretrained_start", help="folder of <regime>.yaml configs")
    parser.add_argument("extra", nargs="*", help="extra CLI overrides passed to every run, after --")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{NAME}.json"
    stored = json.loads(out.read_text()) if out.is_file() else {}
    runs: Dict[str, Dict[str, Dict[str, Any]]] = stored.get("runs", {})

    def write() -> None:
        ordered = {
            s: {r: dict(sorted(runs[s][r].items(), key=lambda kv: int(kv[0]))) for r in REGIMES + RETENTION_REGIMES if runs.get(s, {}).get(r)}
            for s in STARTS if runs.get(s)
        }
        agg = aggregate(ordered)
        diff = differences(agg)
        seeds = sorted({int(seed) for by_regime in ordered.values() for by_seed in by_regime.values() for seed in by_seed})
        out.write_text(json.dumps({"seeds": seeds, "aggregate": agg, "differences": diff, "runs": ordered}, indent=2))
        (args.results / f"{NAME}.md").write_text(markdown(agg, diff, seeds))
        plot(agg, args.results / f"{NAME}.png")

    if not args.collect_only:
        for seed in args.seeds:
            for start in args.starts:
                for regime in args.regimes:
                    if str(seed) in runs.get(start, {}).get(regime, {}) and not args.rerun:
                        print(f"{start}, {regime}, seed {seed}: stored in {out}, skipped (--rerun trains it again)", flush=True)
                        continue
                    config = args.configs.resolve() / f"{regime}.yaml"
                    extra = ["--seed_everything", str(seed), *STARTS[start], *args.extra]
                    wall = run_config(str(config), extra, label=f"{start}, {regime}, seed {seed}")
                    by_seed = runs.setdefault(start, {}).setdefault(regime, {})
                    result = record(by_seed, str(seed), latest_metrics(run_root(config)), wall)
                    result["summary"] = summary(result)
                    write()  # after every run: an interrupted study keeps what finished
    finish_study(runs, out, write, args.results / f"{NAME}.md")


if __name__ == "__main__":
    main()
