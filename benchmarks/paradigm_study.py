"""Paradigm study (Yi et al. 2023) on four real domains, several seeds: does rehearsal close the gap?

Runs ``medcl fit`` on every config in experiments/paradigms/ (specialized, joint, sequential,
sequential + replay, the same with the loss weighted by samples, sequential + replay + LwF) once per seed (``--seed_everything``: weights,
data order, replay draws; the data subset is the same for every run, see
experiments/streams/paradigm_study.yaml), then writes
``benchmarks/results/paradigm_study.{json,md,png}``: per regime mean ± std over seeds of the final
in-domain accuracy per domain, average accuracy, mean AUC, forgetting, BWT, FWT, the cross-domain
score (the Blood head on a SHIFTED COPY of the Blood test set) and the cross-task scores
(AdrenalMNIST3D, never trained: zero-shot from its prompts, and a linear probe), and the gap between
joint training and sequential + replay.

    python benchmarks/paradigm_study.py                                # 6 regimes x 3 seeds
    python benchmarks/paradigm_study.py --regimes sequential --seeds 0 1
    python benchmarks/paradigm_study.py --collect-only                 # rewrite the tables from the stored runs
    (an interrupted study continues where it stopped: stored (regime, seed) runs are skipped unless --rerun)
    python benchmarks/paradigm_study.py --results /tmp/ps -- --trainer.limit_train_batches=2   # smoke run
    python benchmarks/paradigm_study.py --configs my_configs/   # your own <regime>.yaml files (the smoke test's shrunk copies)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean, stdev
from typing import Any, Dict, List, Optional

from config_files import load_config
from runs import REPO, RESULTS, finish_study, latest_metrics, record, run_config, save_figure

NAME = "paradigm_study"
REGIMES = ["specialized", "joint", "sequential", "sequential_replay", "sequential_replay_samples", "sequential_replay_lwf"]
LABELS = {
    "specialized": "(a) specialized, one model per domain",
    "joint": "(b) joint, all domains at once",
    "sequential": "(c) sequential",
    "sequential_replay": "(d) sequential + replay (2 %)",
    "sequential_replay_samples": "(d) + loss weighted by samples",
    "sequential_replay_lwf": "(d) + LwF",
}
CROSS_DOMAIN = "bloodmnist_shifted"
CROSS_TASK = "adrenalmnist3d"
#: the numbers aggregated over seeds (keys of :func:`summary`)
KEYS = ["average_accuracy", "mean_auroc", "forgetting", "bwt", "fwt", "cross_domain", "cross_task_zero_shot", "cross_task_probe", "wall_time_s"]


def summary(result: Dict[str, Any]) -> Dict[str, Any]:
    """One run's table numbers from its ``continual_metrics.json``."""
    final = result["accuracy_matrix"][-1]
    auroc = (result.get("secondary") or {}).get("auroc")
    cross = (result.get("cross_domain") or {}).get(CROSS_DOMAIN) or {}
    task = (result.get("cross_task") or {}).get(CROSS_TASK) or {}
    last = lambda values: (values or [None])[-1]  # noqa: E731
    return {
        "final": dict(zip(result["tasks"], final)),
        "average_accuracy": result["average_accuracy"],
        "mean_auroc": mean(v for v in auroc[-1] if v is not None) if auroc else None,
        "forgetting": result.get("forgetting"),
        "bwt": result.get("bwt"),
        "fwt": result.get("fwt"),
        "cross_domain": last(cross.get("scores")),
        "cross_task_zero_shot": last(task.get("zero_shot")),
        "cross_task_probe": last(task.get("linear_probe")),
        "wall_time_s": result.get("wall_time_s"),
    }


def mean_std(values: List[Optional[float]]) -> Dict[str, Any]:
    """``{"mean", "std", "n"}`` over the values that exist (std is the sample std; 0 for one value)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": mean(values), "std": stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def aggregate(runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """Per regime, mean ± std over seeds of every :data:`KEYS` entry and of each domain's final score."""
    out = {}
    for regime, by_seed in runs.items():
        summaries = [r["summary"] for r in by_seed.values()]
        tasks = list(summaries[0]["final"])
        out[regime] = {
            "seeds": sorted(int(s) for s in by_seed),
            **{key: mean_std([s[key] for s in summaries]) for key in KEYS},
            "final": {t: mean_std([s["final"][t] for s in summaries]) for t in tasks},
        }
    return out


def verdict(agg: Dict[str, Any]) -> Dict[str, Any]:
    """Does rehearsal close the gap to joint training, and by how much (average accuracy)?"""
    need = ("joint", "sequential", "sequential_replay")
    if not all(r in agg and agg[r]["average_accuracy"]["mean"] is not None for r in need):
        return {}
    joint, seq, rep = (agg[r]["average_accuracy"]["mean"] for r in need)
    out = {
        "joint_minus_sequential": joint - seq,
        "joint_minus_replay": joint - rep,
        "gap_closed_fraction": (rep - seq) / (joint - seq) if joint != seq else None,
        "replay_within_3_points_of_joint": joint - rep <= 0.03,
    }
    if "sequential_replay_lwf" in agg:
        out["joint_minus_replay_lwf"] = joint - agg["sequential_replay_lwf"]["average_accuracy"]["mean"]
    if "sequential_replay_samples" in agg:
        out["joint_minus_replay_samples"] = joint - agg["sequential_replay_samples"]["average_accuracy"]["mean"]
        out["replay_samples_within_3_points_of_joint"] = out["joint_minus_replay_samples"] <= 0.03
    return out


def pm(stat: Dict[str, Any], digits: int = 3) -> str:
    if stat["mean"] is None:
        return "n/a"
    return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def markdown(agg: Dict[str, Any], gap: Dict[str, Any], seeds: List[int]) -> str:
    tasks = list(next(iter(agg.values()))["final"])
    lines = [
        "# Paradigm study: BloodMNIST -> OrganAMNIST -> PneumoniaMNIST -> RetinaMNIST", "",
        "One subset for every regime (experiments/streams/paradigm_study.yaml): 1,000 seeded training images per domain",
        "(4,000 in all; every image seen 3 times in every regime), test subsets of 2,000 (Blood, OrganA) and the full test sets",
        "(Pneumonia 624, Retina 400).  medcl-vit-tiny trained from scratch, batch 64, AdamW lr 1e-3, 2 CPU threads.  Replay:",
        "80 exemplars (2 % of the training data), class-balanced, 32 per batch.  LwF: weight 1, temperature 2.",
        f"Mean ± sample std over seeds {', '.join(map(str, seeds))} (`--seed_everything`).", "",
        "In-domain test accuracy after the last experience:", "",
        "| regime | " + " | ".join(tasks) + " | avg acc | mean AUC | forgetting | BWT | FWT |",
        "|---|" + "---|" * (len(tasks) + 5),
    ]
    for regime, a in agg.items():
        lines.append(
            f"| {LABELS.get(regime, regime)} | " + " | ".join(pm(a["final"][t]) for t in tasks)
            + f" | **{pm(a['average_accuracy'])}** | {pm(a['mean_auroc'])} | {pm(a['forgetting'])} | {pm(a['bwt'])} | {pm(a['fwt'])} |"
        )
    lines += [
        "", "Cross-domain and cross-task (after the last experience), and wall time per run (a property of the machine's load at the",
        "time, not a timing benchmark: see overhead.md and scaling.md for those):", "",
        f"| regime | {CROSS_DOMAIN} acc (Blood head, SHIFTED COPY) | {CROSS_TASK} zero-shot acc | {CROSS_TASK} linear probe acc | wall (s) |",
        "|---|---|---|---|---|",
    ]
    for regime, a in agg.items():
        lines.append(
            f"| {LABELS.get(regime, regime)} | {pm(a['cross_domain'])} | {pm(a['cross_task_zero_shot'])} | {pm(a['cross_task_probe'])} | {pm(a['wall_time_s'], 0)} |"
        )
    lines += [
        "", "Specialised learning has one model per domain, so the cross task (one shared model) is not scored (n/a); joint and",
        "specialised learning have one experience, so forgetting, BWT and FWT do not apply (n/a).",
    ]
    if gap:
        closed = gap["gap_closed_fraction"]
        lines += [
            "", "## Does rehearsal close the gap to joint training?", "",
            f"Average accuracy, joint minus sequential: {gap['joint_minus_sequential']:+.3f}; joint minus sequential + replay: "
            f"{gap['joint_minus_replay']:+.3f}" + (f" (replay closes {100 * closed:.0f} % of the gap)" if closed is not None else "") + ".",
            f"Target 'within 3 points of joint with a buffer of at most 2 %': {'met' if gap['replay_within_3_points_of_joint'] else 'MISSED'}.",
        ]
        if "joint_minus_replay_samples" in gap:
            lines.append(
                f"Joint minus sequential + replay with the loss weighted by samples (`task_loss_weighting: samples`, the same buffer): "
                f"{gap['joint_minus_replay_samples']:+.3f}; within 3 points: {'met' if gap['replay_samples_within_3_points_of_joint'] else 'MISSED'}."
            )
        if "joint_minus_replay_lwf" in gap:
            lines.append(f"Joint minus sequential + replay + LwF: {gap['joint_minus_replay_lwf']:+.3f}.")
    return "\n".join(lines) + "\n"


def plot(agg: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    regimes = list(agg)
    keys = [("average_accuracy", "avg acc"), ("mean_auroc", "mean AUC"), ("forgetting", "forgetting"), ("cross_domain", "cross-domain acc")]
    x = np.arange(len(regimes))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(8.5, 3.8))
    for k, (key, label) in enumerate(keys):
        means = [agg[r][key]["mean"] or 0.0 for r in regimes]
        stds = [agg[r][key]["std"] or 0.0 for r in regimes]
        ax.bar(x + (k - (len(keys) - 1) / 2) * width, means, width, yerr=stds, capsize=2, label=label)
    ax.set_xticks(x, [LABELS.get(r, r).split(",")[0] for r in regimes], rotation=12, fontsize=8)
    ax.set_ylim(0, 1)
    seeds = next(iter(agg.values()))["seeds"]
    ax.set_title(f"Blood -> OrganA -> Pneumonia -> Retina, mean ± std over {len(seeds)} seeds")
    ax.legend(fontsize=8, ncols=4, loc="upper right")
    save_figure(fig, path)


def run_root(config: Path) -> Path:
    """Where a config's runs land: its ``trainer.default_root_dir`` (relative to the repo root)."""
    root = load_config(config)["trainer"]["default_root_dir"]
    return REPO / root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--regimes", nargs="+", default=REGIMES, choices=REGIMES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--collect-only", action="store_true", help="do not train; rewrite the tables from the stored runs")
    parser.add_argument("--rerun", action="store_true", help="train (regime, seed) pairs that already have stored results again (default: skip them, so an interrupted study continues)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder for paradigm_study.{json,md,png}")
    parser.add_argument("--configs", type=Path, default=REPO / "experiments" / "paradigms", help="folder of <regime>.yaml configs (default: experiments/paradigms)")
    parser.add_argument("extra", nargs="*", help="extra CLI overrides passed to every run, after --")
    args = parser.parse_args()
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"{NAME}.json"
    stored = json.loads(out.read_text()) if out.is_file() else {}
    runs: Dict[str, Dict[str, Any]] = stored.get("runs", {}) if "runs" in stored else {}

    def write() -> Dict[str, Any]:
        ordered = {r: dict(sorted(runs[r].items(), key=lambda kv: int(kv[0]))) for r in REGIMES if runs.get(r)}
        agg = aggregate(ordered)
        gap = verdict(agg)
        seeds = sorted({int(s) for by_seed in ordered.values() for s in by_seed})
        out.write_text(json.dumps({"seeds": seeds, "aggregate": agg, "verdict": gap, "runs": ordered}, indent=2))
        (args.results / f"{NAME}.md").write_text(markdown(agg, gap, seeds))
        plot(agg, args.results / f"{NAME}.png")
        return agg

    if not args.collect_only:
        for seed in args.seeds:
            for regime in args.regimes:
                if str(seed) in runs.get(regime, {}) and not args.rerun:
                    print(f"{regime}, seed {seed}: stored in {out}, skipped (--rerun trains it again)", flush=True)
                    continue
                config = args.configs.resolve() / f"{regime}.yaml"
                if not config.is_file():
                    raise SystemExit(f"--configs {args.configs}: no {config.name} for the regime {regime!r}")
                extra = ["--seed_everything", str(seed), *args.extra]
                wall = run_config(str(config), extra, label=f"{regime}, seed {seed}")
                by_seed = runs.setdefault(regime, {})
                result = record(by_seed, str(seed), latest_metrics(run_root(config)), wall)
                result["summary"] = summary(result)
                write()  # after every run: an interrupted study keeps what finished
    finish_study(runs, out, write, args.results / f"{NAME}.md")


if __name__ == "__main__":
    main()
