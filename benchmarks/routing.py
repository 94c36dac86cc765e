"""General-purpose inference without task labels (issue 26): a task router in the model, over seeds.

Cases (``<stream>/<router>/<training>``):

* ``four/<kind>/replay`` for the router kinds gaussian, prototypes, learned:
  experiments/routing/four_medmnist_replay.yaml (Blood -> OrganA -> Pneumonia -> Retina, 500-image
  reservoir buffer; never-learned source: CVC-ClinicDB colonoscopy frames);
* ``four/gaussian/<strategy>``: every other strategy of experiments/strategies/ on the same stream
  (experiments/streams/four_medmnist_routing.yaml) with the Gaussian router, so the strategies are
  compared on task-agnostic accuracy too;
* ``mixed/<kind>/replay``: experiments/routing/mixed_kinds_replay.yaml
  (OrganA classes and a SEMI-SYNTHETIC OrganA risk score sharing one source, then Kvasir-SEG masks;
  never-learned source: PneumoniaMNIST).

LifeLonger's row (Derakhshani et al. 2022, MedMNIST domains in sequence, no task labels at test
time) is ``four/*``: routing + per-task heads (``task-agnostic``) against one head over the union of
classes (``union head``, no router).  Writes ``benchmarks/results/routing.{json,md,png}``; a stored
(case, seed) is skipped, so an interrupted study resumes.

    python benchmarks/routing.py                                  # every case, seeds 0 1 2 (hours on 2 CPU cores)
    python benchmarks/routing.py --cases four/prototypes/replay --seeds 0
    python benchmarks/routing.py --collect-only                   # rewrite the tables from the stored runs
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from statistics import mean
from typing import Any, Dict, List

from paradigm_study import mean_std
from runs import REPO, RESULTS, cpu_model, fmt_mean_std, latest_metrics, load_results, record, run_config, save_figure

NAME = "routing"
FOUR_STREAM = "experiments/streams/four_medmnist_routing.yaml"
KINDS = ["gaussian", "prototypes", "learned"]
STRATEGIES = ["naive", "ewc", "lwf", "replay_lwf", "der", "replay_class_balanced", "replay_herding"]


def _router(kind: str) -> List[str]:
    return ["--model.init_args.router", json.dumps({"kind": kind})]


def cases() -> Dict[str, Dict[str, Any]]:
    """case -> the config it runs and the overrides it adds."""
    out: Dict[str, Dict[str, Any]] = {}
    for kind in KINDS:
        out[f"four/{kind}/replay"] = {"config": "experiments/routing/four_medmnist_replay.yaml", "extra": _router(kind)}
    for strategy in STRATEGIES:
        out[f"four/gaussian/{strategy}"] = {
            "config": f"experiments/strategies/{strategy}.yaml", "extra": [*_router("gaussian"), "--data", FOUR_STREAM],
        }
    for kind in KINDS:
        out[f"mixed/{kind}/replay"] = {"config": "experiments/routing/mixed_kinds_replay.yaml", "extra": _router(kind)}
    return out


def summary(result: Dict[str, Any]) -> Dict[str, Any]:
    """One run's numbers: the last row, and routing / task-agnostic averages after every experience."""
    section = result["task_agnostic"]
    routing = section["routing_accuracy"]
    per_experience = []
    for i in range(len(result["experiences"])):
        learned = [v[i] for v in routing.values() if v[i] is not None]
        per_experience.append({
            "routing_accuracy": mean(learned) if learned else None,
            "task_agnostic_average": section["average"][i],
            "task_aware_average": section["task_aware_average"][i],
            "union_head_average": (section.get("union_head") or {}).get("average", [None] * (i + 1))[i],
        })
    ood = next(iter(section["ood"].values()), {"auroc": [None], "unknown_rate": [None]})
    unknown = [v[-1] for v in section["unknown_rate"].values() if v[-1] is not None]
    return {
        "per_experience": per_experience,
        "routing": {s: v[-1] for s, v in routing.items()},
        "task_agnostic": {t: v[-1] for t, v in section["scores"].items()},
        "routing_accuracy": per_experience[-1]["routing_accuracy"],
        "task_aware_average": section["task_aware_average"][-1],
        "task_agnostic_average": section["average"][-1],
        "gap": section["gap"][-1],
        "union_head_average": per_experience[-1]["union_head_average"],
        "ood_domain": next(iter(section["ood"]), None),
        "ood_auroc": ood["auroc"][-1],
        "ood_called_unknown": ood["unknown_rate"][-1],
        "known_called_unknown": mean(unknown) if unknown else None,
    }


KEYS = ["routing_accuracy", "task_aware_average", "task_agnostic_average", "gap", "union_head_average", "ood_auroc",
        "ood_called_unknown", "known_called_unknown", "wall_time_s"]


def aggregate(runs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    out = {}
    for case, by_seed in runs.items():
        summaries = [{**r["summary"], "wall_time_s": r.get("wall_time_s")} for r in by_seed.values()]
        n = len(summaries[0]["per_experience"])
        out[case] = {
            "seeds": sorted(int(s) for s in by_seed),
            "ood_domain": summaries[0]["ood_domain"],
            **{k: mean_std([s.get(k) for s in summaries]) for k in KEYS},
            "routing": {src: mean_std([s["routing"].get(src) for s in summaries]) for src in summaries[0]["routing"]},
            "per_experience": [
                {k: mean_std([s["per_experience"][i][k] for s in summaries]) for k in summaries[0]["per_experience"][i]} for i in range(n)
            ],
        }
    return out



def markdown(agg: Dict[str, Any], cpus: List[str]) -> str:
    lines = [
        "# Without task labels: a task router in the model", "",
        "Every test image is routed by the model's task router (frozen copy of the starting image tower, statistics of its",
        "blocks' feature maps; `gaussian`: one Gaussian per source, Mahalanobis distances; `prototypes`: 10 K-means centres",
        "per source; `learned`: a small classifier on a 500-feature memory per source), then predicted",
        "by the routed source's heads; a wrong route or an 'unknown' verdict counts as wrong.  task-aware: the usual matrix",
        "(each test set to its own head).  union head: no router, the classification heads' logits in one softmax over the",
        "union of classes (LifeLonger's single-head baseline).  Unknown threshold: the 0.99 quantile of each source's",
        "validation unknown scores.  OOD: a never-learned source (`four`: CVC-ClinicDB colonoscopy frames; `mixed`:",
        "PneumoniaMNIST chest X-rays); AUROC of the unknown score against the learned sources' test images.",
        "medcl-vit-tiny from scratch; mean ± sample std over the seeds listed; 2 CPU threads.",
        f"CPU: {', '.join(cpus)}.", "",
        "## After the last experience", "",
        "| case | seeds | routing acc | task-aware avg | task-agnostic avg | gap | union head avg | OOD AUROC | OOD called unknown | learned called unknown | wall (s) |",
        "|---|---|" + "---|" * 9,
    ]
    for case, a in agg.items():
        lines.append(f"| {case} | {','.join(map(str, a['seeds']))} | " + " | ".join(fmt_mean_std(a[k]) for k in KEYS[:-1]) + f" | {fmt_mean_std(a['wall_time_s'], 0)} |")
    lines += ["", "## After every experience (routing accuracy averaged over the learned sources / task-agnostic average / task-aware average)", ""]
    for case, a in agg.items():
        if not case.endswith("/replay"):
            continue
        cells = [f"{fmt_mean_std(e['routing_accuracy'])} / {fmt_mean_std(e['task_agnostic_average'])} / {fmt_mean_std(e['task_aware_average'])}" for e in a["per_experience"]]
        lines.append(f"* {case}: " + "; ".join(f"after {i}: {c}" for i, c in enumerate(cells)))
    lines += ["", "## Routing accuracy per source, after the last experience", ""]
    for case, a in agg.items():
        lines.append(f"* {case}: " + ", ".join(f"{s} {fmt_mean_std(v)}" for s, v in a["routing"].items()))
    return "\n".join(lines) + "\n"


def plot(agg: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(agg)
    keys = [("task_aware_average", "task-aware"), ("task_agnostic_average", "task-agnostic (routed)"), ("union_head_average", "union head"),
            ("routing_accuracy", "routing acc"), ("ood_auroc", "OOD AUROC")]
    x = np.arange(len(names))
    width = 0.8 / len(keys)
    fig, ax = plt.subplots(figsize=(max(8, 1.0 * len(names) + 3), 4))
    for k, (key, label) in enumerate(keys):
        values = [agg[n][key]["mean"] or 0.0 for n in names]
        errors = [agg[n][key]["std"] or 0.0 for n in names]
        ax.bar(x + (k - (len(keys) - 1) / 2) * width, values, width, yerr=errors, capsize=2, label=label)
    ax.set_xticks(x, names, rotation=25, ha="right", fontsize=8)
    ax.set_ylim(0, 1.25)  # room for the legend above the bars
    ax.set_title("Without task labels: mean ± std over seeds, after the last experience")
    ax.legend(fontsize=7, ncols=5, loc="upper center")
    save_figure(fig, path)


def main() -> None:
    all_cases = cases()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", default=list(all_cases), choices=list(all_cases))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--collect-only", action="store_true", help="do not train; rewrite the tables from the stored runs")
    parser.add_argument("--rerun", action="store_true", help="train stored (case, seed) runs again (default: skip them)")
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"{NAME}.json"
    runs: Dict[str, Dict[str, Any]] = load_results(NAME).get("runs", {})

    def write() -> None:
        ordered = {c: runs[c] for c in all_cases if runs.get(c)}
        if not ordered:
            return
        agg = aggregate(ordered)
        cpus = sorted({r.get("cpu") or "not recorded" for by_seed in ordered.values() for r in by_seed.values()})
        out.write_text(json.dumps({"aggregate": agg, "runs": ordered}, indent=2))
        (RESULTS / f"{NAME}.md").write_text(markdown(agg, cpus))
        plot(agg, RESULTS / f"{NAME}.png")

    if not args.collect_only:
        for seed in args.seeds:
            for case in args.cases:
                if str(seed) in runs.get(case, {}) and not args.rerun:
                    print(f"{case}, seed {seed}: stored in {out}, skipped (--rerun trains it again)", flush=True)
                    continue
                spec = all_cases[case]
                root = REPO / "runs" / "routing" / case.replace("/", "_")
                wall = run_config(spec["config"], [*spec["extra"], "--seed_everything", str(seed), "--trainer.default_root_dir", str(root.relative_to(REPO))],
                                  label=f"{case} seed {seed}")
                result = record(runs.setdefault(case, {}), str(seed), latest_metrics(root), wall)
                result["summary"] = summary(result)
                result["cpu"] = cpu_model()
                write()  # after every run: an interrupted study keeps what finished
    if not runs:
        raise SystemExit(f"{out}: no stored runs to collect; run without --collect-only first")
    write()
    print((RESULTS / f"{NAME}.md").read_text())


if __name__ == "__main__":
    main()
