"""Write ``docs/benchmarks.md`` from the latest ``benchmarks/results/*.{json,md}``: the machine, the
targets of issue 9 with the measured value and whether each is met, then every benchmark's own
table under the command that produced it.  The plots (``benchmarks/results/*.png``) are copied to
``docs/figures/benchmarks/`` so that the documentation site (``mkdocs build --strict``, whose pages
live in ``docs/``) shows them; the page links those copies.

    python benchmarks/report.py            # after running the benchmarks
"""
from __future__ import annotations

import json
import platform
import re
import shutil
from statistics import mean, median
from typing import Any, Dict, List, Optional, Tuple

from runs import REPO, RESULTS, load_results

DOC = REPO / "docs" / "benchmarks.md"
FIGURES = REPO / "docs" / "figures" / "benchmarks"  # copies of the results' plots, inside the docs site

#: (results name, title, command, budget) in the order of the document
SECTIONS: List[Tuple[str, str, str, str]] = [
    ("paradigm_study", "1. The paradigm study (Yi et al. 2023), 3 seeds", "python benchmarks/paradigm_study.py",
     "4 real domains, 1,000 training images each, 3 epochs per domain (every image seen 3 times in every regime), replay 80 exemplars (2 %)."),
    ("avalanche_compare", "2. Against Avalanche 0.6.0, in one process", "pip install -e '.[bench]' && python benchmarks/avalanche_compare.py",
     "the same 4 domains, subsets, model, 3 epochs per experience, batch 64, buffer 500, AdamW lr 1e-3; times from seed 0 (2 repeats, ABBA order), accuracy over seeds 0, 1, 2."),
    ("overhead", "4. Overhead, throughput, precision, FLOP utilisation, wall-clock breakdown", "python benchmarks/overhead.py",
     "demo data, tiny ViT, batch 64 (+32 replayed); 40 timed steps after 5 warm-up steps, 5 interleaved repeats; the quickstart as shipped for the breakdown."),
    ("scaling", "5. Scaling with the length of the stream", "python benchmarks/scaling.py",
     "8 experiences of 2,000 demo images, 1 epoch each, a fixed 200-sample buffer; run twice (every old task replayed every step; at most 1 old task per step)."),
    ("medmnist_baselines", "6. Against the MedMNIST v2 ResNet-18 (28) baselines", "python benchmarks/medmnist_baselines.py",
     "joint training on the full official training sets; the epoch budget is stated in the table."),
    ("pretrained_start", "7. A pretrained start against a random one (Yi et al.'s study from MedCL's shipped model), 3 seeds",
     "python benchmarks/pretrained_start.py",
     "Pneumonia -> Retina -> Kvasir-SEG (64 px) -> semi-synthetic prognosis; 1,000 training images per classification task, 3 passes per image, replay 80 exemplars (2 %)."),
    ("wise_ft", "8. WiSE-FT: in-domain score against the pretrained model's zero-shot skill", "python benchmarks/wise_ft.py",
     "the pretrained-start sequential + replay run of section 7, once per alpha."),
    ("volume_memory", "9. One 512 x 512 x N CT volume in bounded memory", "python benchmarks/volume_memory.py --whole-slices 100 200",
     "synthetic CT volumes (generated, int16 HU), tiny ViT with random weights, 64-px sliding windows at full resolution; one fresh process per row."),
    ("large_collection", "10. A CT collection larger than memory: one experience trained through it", "python benchmarks/large_collection.py",
     "150 and 300 generated CT volumes of 512 x 512 x 64 on disk, resampled to 16 x 64 x 64, 2 epochs (cold, then cached), batch 4; one fresh process per size."),
    ("speed", "11. Speed on the machine you have: torch.compile and bf16 against fp32", "python benchmarks/speed.py",
     "the quickstart's training step (BloodMNIST demo, tiny ViT, batch 64), interleaved repeats; then the whole quickstart for 3 seeds, fastest variant against fp32."),
    ("routing", "12. Without task labels: a task router in the model, 3 seeds", "python benchmarks/routing.py",
     "the strategies' four-domain stream (replay 500) and the mixed-kind stream (replay 600), tiny ViT from scratch; three router kinds; the other strategies with the Gaussian router (seeds listed)."),
]


def _get(data: Dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def targets() -> List[Tuple[str, str, Optional[bool]]]:
    """``(target, measured, met)`` for every target of issue 9 whose benchmark has results."""
    out: List[Tuple[str, str, Optional[bool]]] = []
    oh = load_results("overhead")
    if oh:
        t = oh["throughput"]
        paired = oh["paired_ratios"]["medcl_full"]
        ratio = median(paired)
        out.append(("MedCL step throughput with replay and every shipped callback >= 0.95x the hand-written loop",
                    f"{ratio:.3f}x (median of {len(paired)} paired ratios, {min(paired):.3f}–{max(paired):.3f}; medians "
                    f"{t['medcl_full']['images_per_s']:.0f} vs {t['hand_replay']['images_per_s']:.0f} images/s)", ratio >= 0.95))
        share = oh["breakdown"]["outside_training_share"]
        out.append(("time outside training steps <= 15 % of a continual run's wall time (quickstart)", f"{100 * share:.1f} %", share <= 0.15))
    av = load_results("avalanche_compare")
    runs = av.get("runs") or {}
    for strategy in sorted({r["strategy"] for r in runs.values()}):
        m, a = runs.get(f"medcl/{strategy}"), runs.get(f"avalanche/{strategy}")
        if m and a:
            mt, at = m["times"]["total_s"], a["times"]["total_s"]
            seeds = av.get("seed_runs") or {}
            ms, as_ = seeds.get(f"medcl/{strategy}", {}), seeds.get(f"avalanche/{strategy}", {})
            if len(ms) > 1 and len(as_) > 1:  # the accuracy over seeds, not one seed's batch order
                macc, aacc = (mean(v["average_accuracy"] for v in x.values()) for x in (ms, as_))
                acc_text = f"avg acc {macc:.3f} vs {aacc:.3f} (mean of {len(ms)} / {len(as_)} seeds)"
            else:
                macc, aacc = m["medcl_metrics"]["average_accuracy"], a["medcl_metrics"]["average_accuracy"]
                acc_text = f"avg acc {macc:.3f} vs {aacc:.3f} (seed 0)"
            out.append((f"at an equal budget MedCL beats Avalanche's wall-clock time with equal or better accuracy ({strategy})",
                        f"time {mt:.0f} s vs {at:.0f} s; {acc_text}", mt < at and macc >= aacc - 1e-9))
    ps = load_results("paradigm_study")
    verdict = ps.get("verdict") or {}
    if verdict:
        out.append(("sequential + replay (buffer <= 2 % of the training data) within 3 points of joint training's average accuracy",
                    f"joint - replay = {100 * verdict['joint_minus_replay']:+.1f} points (mean over {len(ps['seeds'])} seeds)", verdict["replay_within_3_points_of_joint"]))
        if "joint_minus_replay_samples" in verdict:
            out.append(("the same, with the loss weighted by samples (`model.task_loss_weighting: samples`, experiments/paradigms/sequential_replay_samples.yaml)",
                        f"joint - replay = {100 * verdict['joint_minus_replay_samples']:+.1f} points (mean over {len(ps['seeds'])} seeds)",
                        verdict["replay_samples_within_3_points_of_joint"]))
    sc = load_results("scaling")
    if _get(sc, "analysis", "flat") is not None:
        n = sc["config"]["experiences"]
        out.append(("time per experience flat (±10 %) as the stream grows (every old task replayed every step)",
                    f"largest deviation {100 * sc['analysis']['max_deviation_2_to_n']:.1f} % over experiences 2..{n}, experience {n} vs 2: "
                    f"{100 * sc['analysis']['growth_2_to_n']:+.1f} %", sc["analysis"]["flat"]))
        capped = sc.get("capped")
        if capped and capped["analysis"].get("flat") is not None:
            out.append((f"the same with `ReplayCallback(max_tasks_per_step={capped['max_tasks_per_step']})`",
                        f"largest deviation {100 * capped['analysis']['max_deviation_2_to_n']:.1f} %, experience {n} vs 2: "
                        f"{100 * capped['analysis']['growth_2_to_n']:+.1f} %", capped["analysis"]["flat"]))
    return out


def machine() -> str:
    oh = load_results("overhead")
    cpu = _get(oh, "cpu", "cpu") or platform.processor() or "unknown CPU"
    threads = oh.get("threads", 2)
    return (f"{cpu}, 2 cores, {threads} torch threads, 24 GB RAM, no GPU; torch {oh.get('torch', '2.14.1')} (CPU); "
            f"CPU capability {_get(oh, 'cpu', 'torch_cpu_capability') or 'n/a'}, native bf16: {', '.join(_get(oh, 'cpu', 'native_bf16') or []) or 'none'}.")


def document(notes: Dict[str, str]) -> str:
    lines = [
        "# Benchmarks", "",
        "Every benchmark is one command under `benchmarks/`; it writes `benchmarks/results/<name>.json`, a markdown table and plots.",
        "This page is written by `python benchmarks/report.py` from those files.  CI runs a shrunken smoke test of each script",
        "(`tests/test_benchmarks.py`, `tests/test_benchmark_avalanche.py`), never the benchmarks themselves.", "",
        f"**Machine**: {machine()}  Wall times and rates depend on the CPU, the thread count and other load; accuracies depend on",
        "the torch build, the CPU and the thread count, not on load.", "",
        "## Targets", "", "| target | measured | |", "|---|---|---|",
    ]
    for target, measured, met in targets():
        lines.append(f"| {target} | {measured} | {'met' if met else '**missed**'} |")
    if notes.get("targets"):
        lines += ["", notes["targets"]]
    lines += ["", "3. **Metric cross-checks** against peer libraries are tests in the normal suite (`tests/test_metric_crosschecks.py`): ACC and AUC",
              "   against the `medmnist` package's `Evaluator` on the same scores (Blood, OrganA, Pneumonia, Retina), the C-index against lifelines",
              "   (ties, heavy censoring, batch-wise updates), BWT and forgetting against Lopez-Paz & Ranzato / Chaudhry et al. and, where",
              "   avalanche-lib is installed, Avalanche's `StreamBWT` / `StreamForgetting`; `avalanche_compare.py` also reports both definitions."]
    for name, title, command, budget in SECTIONS:
        md = RESULTS / f"{name}.md"
        lines += ["", f"## {title}", "", f"```bash\n{command}\n```", "", f"Budget: {budget}", ""]
        if name in notes:
            lines += [notes[name], ""]
        if not md.is_file():
            lines.append("*(not run yet)*")
            continue
        body = md.read_text().splitlines()
        body = body[1:] if body and body[0].startswith("# ") else body  # the section has its own title
        lines += [_relink(line) for line in body]
        png = RESULTS / f"{name}.png"
        if png.is_file():
            lines += ["", f"![{name}](figures/benchmarks/{name}.png)"]
    return "\n".join(lines) + "\n"


def _relink(line: str) -> str:
    """A results file's relative link, made to work from ``docs/benchmarks.md``: a plot points at its
    copy in ``docs/figures/benchmarks/``, anything else at the file in ``benchmarks/results/``."""
    if "](" not in line or "http" in line:
        return line
    return re.sub(r"\]\(([^)]+)\)", lambda m: f"](figures/benchmarks/{m.group(1)})" if m.group(1).endswith(".png")
                  else f"](../benchmarks/results/{m.group(1)})", line)


def copy_figures() -> None:
    """Copy every plot of ``benchmarks/results/`` into ``docs/figures/benchmarks/`` (the site's copy)."""
    FIGURES.mkdir(parents=True, exist_ok=True)
    for png in sorted(RESULTS.glob("*.png")):
        shutil.copyfile(png, FIGURES / png.name)


def main() -> None:
    notes_file = RESULTS / "notes.json"
    notes = json.loads(notes_file.read_text()) if notes_file.is_file() else {}
    copy_figures()
    DOC.write_text(document(notes))
    print(f"wrote {DOC} and copied the plots to {FIGURES}")


if __name__ == "__main__":
    main()
