"""Scaling: time per experience and peak memory as the stream grows (fixed replay buffer), and the
experience-end evaluation time as the number of seen tasks grows.

One ``medcl fit`` (in process) of an N-experience stream built from the shipped demo data, the
stream of ``benchmarks/long_stream_memory.py``: BloodMNIST and OrganAMNIST alternate, each experience a
distinct task (its own head) on its own seeded subset of ``--train-subset`` training images;
1 epoch per experience, tiny ViT, batch 64, a class-balanced ``ReplayCallback`` of ``--capacity``
samples (32 per batch), ``ContinualEvaluation`` testing every seen task (``--eval-subset`` test
images each) after every experience, a ``ModelCheckpoint`` (every epoch) and a CSV logger.  A probe callback
(last in the list) takes, for every experience:

* training time: the epoch (``on_train_epoch_start`` -> ``on_train_epoch_end``) minus its validation;
* validation time (``on_validation_start`` -> ``on_validation_end``; every task with a head);
* experience-end time: from the epoch end to the probe's ``after_experience``, i.e. after
  ``ContinualEvaluation`` has tested every seen task;
* RSS and peak RSS (``/proc/self/status``).

Experience 1 trains without replay (the buffer is empty), so "flat" is judged over experiences
2..N: every one within ±10 % of their mean.  Each old task in a batch costs one more
forward/backward pass, so the stream runs twice: as configured (every old task replayed every
step) and with ``ReplayCallback(max_tasks_per_step=--max-tasks-per-step)``, which replays the same
32 exemplars per step from a bounded number of old tasks.  Writes
``benchmarks/results/scaling.{json,md,png}``.

    python benchmarks/scaling.py                    # 8 experiences, both variants (~4 min on 2 idle cores)
    python benchmarks/scaling.py --experiences 3 --train-subset 128 --eval-subset 64 --results /tmp/sc   # smoke run
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from statistics import mean, median
from typing import Any, Dict, List

import pytorch_lightning as pl

from framework.strategies import ExperienceCallback, Replay
import torch
import yaml

from long_stream_memory import proc_status, stream_config
from runs import REPO, RESULTS, fmt, write_results, save_figure

NAME = "scaling"


class ScalingProbe(ExperienceCallback):
    """Times every experience's training, validation and experience-end work; reads memory."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: List[Dict[str, Any]] = []
        self._epoch_start = self._val_start = self._epoch_end = 0.0
        self._val = 0.0
        self._cpu_start = 0.0
        self._step_ends: List[float] = []

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._epoch_start, self._val, self._step_ends = time.perf_counter(), 0.0, []
        self._cpu_start = time.process_time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self._step_ends.append(time.perf_counter())

    def on_validation_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer, pl_module) -> None:
        self._val += time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._epoch_end = time.perf_counter()  # callbacks run before the module's hook, which ends the experience
        self._cpu_end = time.process_time()

    def after_experience(self, trainer, pl_module, experience: int, tasks: List[str]) -> None:
        now = time.perf_counter()
        status = proc_status()
        buffer = next((c.buffer for c in trainer.callbacks if isinstance(c, Replay)), None)
        row = {
            "experience": experience + 1,
            "seen_tasks": len(pl_module.task_specs),
            "train_s": self._epoch_end - self._epoch_start - self._val,
            "steps": len(self._step_ends),
            # the median interval between step ends times the steps: the experience's training time,
            # robust to a burst of load from elsewhere on the machine (the first step, with its loader start-up, is left out)
            "train_median_s": median(b - a for a, b in zip(self._step_ends, self._step_ends[1:])) * len(self._step_ends) if len(self._step_ends) > 1 else None,
            "train_cpu_s": self._cpu_end - self._cpu_start,
            "validation_s": self._val,
            "experience_end_s": now - self._epoch_end,
            "rss_mib": status["VmRSS"],
            "peak_rss_mib": status["VmHWM"],
            "buffer_samples": len(buffer) if buffer is not None else 0,
            "buffer_allocated_mib": buffer.allocated_bytes() / 2**20 if buffer is not None else 0.0,
        }
        self.rows.append(row)
        print(f"[scaling] experience {row['experience']}: train {row['train_s']:.1f} s, validation {row['validation_s']:.1f} s, "
              f"evaluation {row['experience_end_s']:.1f} s ({row['seen_tasks']} tasks), peak RSS {row['peak_rss_mib']:.0f} MiB", flush=True)


def deviation(values: List[float]) -> float:
    """Largest relative deviation from the mean."""
    centre = mean(values)
    return max(abs(v - centre) / centre for v in values)


def analyse(rows: List[Dict[str, Any]], tolerance: float = 0.10) -> Dict[str, Any]:
    """Flatness of the training time per experience over experiences 2..N (judged on the median-step estimate)."""
    later = [r["train_median_s"] for r in rows[1:] if r.get("train_median_s") is not None]
    if not later:
        return {"flat": None}
    growth = later[-1] / later[0] - 1
    evals = [(r["seen_tasks"], r["experience_end_s"]) for r in rows]
    per_task = [t / n for n, t in evals]
    return {
        "mean_train_s_2_to_n": mean(later),
        "max_deviation_2_to_n": deviation(later),
        "max_deviation_wall_2_to_n": deviation([r["train_s"] for r in rows[1:]]),
        "growth_2_to_n": growth,
        "flat": deviation(later) <= tolerance,
        "evaluation_s_per_seen_task": {"first": per_task[0], "last": per_task[-1], "mean": mean(per_task)},
        "peak_rss_growth_mib": rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"],
    }


def markdown(r: Dict[str, Any]) -> str:
    cfg = r["config"]
    lines = [
        "# Scaling with the length of the stream", "",
        f"{cfg['experiences']} experiences of distinct demo tasks (BloodMNIST / OrganAMNIST alternating), {cfg['train_subset']} training "
        f"images each, 1 epoch per experience, tiny ViT, batch 64 + 32 replayed; class-balanced buffer of {cfg['capacity']} samples (fixed); "
        f"every seen task tested on {cfg['eval_subset']} images after every experience; {r['threads']} torch threads.", "",
        "## Every old task replayed every step (as configured)", "",
    ]
    lines += variant_table(r["rows"], r["analysis"], cfg)
    capped = r.get("capped")
    if capped:
        cap = capped["max_tasks_per_step"]
        lines += [
            "", f"## `ReplayCallback(max_tasks_per_step={cap})`: the 32 replayed exemplars of a step come from at most {cap} old task(s)", "",
            "Each task in a batch is one more forward/backward pass of the model (its own head, its own mean loss), so with every old task "
            "in every step a step's cost grows with the number of tasks seen. With the cap the step holds the current task and at most "
            f"{cap} old one(s), drawn at random each step.", "",
        ]
        lines += variant_table(capped["rows"], capped["analysis"], cfg)
    return "\n".join(lines) + "\n"


def variant_table(rows: List[Dict[str, Any]], a: Dict[str, Any], cfg: Dict[str, Any]) -> List[str]:
    lines = [
        "| experience | seen tasks | training, wall (s) | training, median step x steps (s) | training CPU (s) | validation (s) "
        "| experience-end evaluation (s) | RSS (MiB) | peak RSS (MiB) | buffer samples |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['experience']} | {row['seen_tasks']} | {row['train_s']:.2f} | {fmt(row.get('train_median_s'), 2)} | {row['train_cpu_s']:.2f} "
            f"| {row['validation_s']:.2f} | {row['experience_end_s']:.2f} "
            f"| {row['rss_mib']:.0f} | {row['peak_rss_mib']:.0f} | {row['buffer_samples']} |"
        )
    if a.get("flat") is not None:
        lines += [
            "", f"Training time per experience, experiences 2..{cfg['experiences']} (with replay), as median step time x steps: mean "
            f"{a['mean_train_s_2_to_n']:.2f} s, largest deviation {100 * a['max_deviation_2_to_n']:.1f} %, experience {cfg['experiences']} against 2: "
            f"{100 * a['growth_2_to_n']:+.1f} % — target ±10 %: **{'met' if a['flat'] else 'MISSED'}** (the wall time of the epoch, "
            f"which also holds bursts of other load on the machine, deviates by up to {100 * a['max_deviation_wall_2_to_n']:.1f} %).",
            f"Experience-end evaluation grows with the number of seen tasks (each is tested): {a['evaluation_s_per_seen_task']['first']:.2f} s per "
            f"task after experience 1, {a['evaluation_s_per_seen_task']['last']:.2f} s per task after experience {cfg['experiences']}.",
            f"Peak RSS grows by {a['peak_rss_growth_mib']:.0f} MiB from experience 1 to {cfg['experiences']} (buffer, one head, its metrics and "
            "optimizer group per task; see long_stream_memory.md for the decomposition).",
        ]
    return lines


def plot(r: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = r["rows"]
    x = [row["experience"] for row in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
    ax1.plot(x, [row["train_median_s"] for row in rows], "o-", label="training (every old task replayed)")
    if r.get("capped"):
        ax1.plot(x, [row["train_median_s"] for row in r["capped"]["rows"]], "o-", color="C3",
                 label=f"training (max_tasks_per_step={r['capped']['max_tasks_per_step']})")
    ax1.plot(x, [row["experience_end_s"] for row in rows], "s--", label="experience-end evaluation")
    ax1.plot(x, [row["validation_s"] for row in rows], "^:", label="validation")
    if r["analysis"].get("mean_train_s_2_to_n"):
        m = r["analysis"]["mean_train_s_2_to_n"]
        ax1.axhspan(0.9 * m, 1.1 * m, color="C0", alpha=0.12, label="±10 % of training mean (exp. 2..N)")
    ax1.set_xlabel("experience (= seen tasks)")
    ax1.set_ylabel("seconds")
    ax1.set_ylim(bottom=0)
    ax1.legend(fontsize=7)
    ax1.set_title("time per experience")
    ax2.plot(x, [row["peak_rss_mib"] for row in rows], "o-", label="peak RSS")
    ax2.plot(x, [row["rss_mib"] for row in rows], "s--", label="RSS")
    ax2.set_xlabel("experience")
    ax2.set_ylabel("MiB")
    ax2.legend(fontsize=7)
    ax2.set_title(f"memory (buffer fixed at {r['config']['capacity']} samples)")
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiences", type=int, default=8)
    parser.add_argument("--train-subset", type=int, default=2000, help="training images per experience (the demo files hold 2,000)")
    parser.add_argument("--eval-subset", type=int, default=300)
    parser.add_argument("--capacity", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-tasks-per-step", type=int, default=1, help="the cap of the second run (0: skip the second run)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.experiences < 1:
        parser.error(f"--experiences expected >= 1, found {args.experiences}")
    if args.max_tasks_per_step < 0:
        parser.error(f"--max-tasks-per-step expected >= 0, found {args.max_tasks_per_step}")
    os.chdir(REPO)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows = run_stream(args, REPO / "runs" / "benchmarks" / NAME, None)
    result = {
        "config": vars(args) | {"results": str(args.results)},
        "threads": torch.get_num_threads(),
        "wall_s": time.perf_counter() - start,
        "rows": rows,
        "analysis": analyse(rows),
    }
    if args.max_tasks_per_step:
        capped = run_stream(args, REPO / "runs" / "benchmarks" / f"{NAME}_capped", args.max_tasks_per_step)
        result["capped"] = {"max_tasks_per_step": args.max_tasks_per_step, "rows": capped, "analysis": analyse(capped)}
    write_results(args.results, NAME, result, markdown, plot)


def run_stream(args, root: Path, max_tasks_per_step) -> List[Dict[str, Any]]:
    """One ``medcl fit`` of the stream; the probe's row per experience."""
    from framework.cli import run_cli

    config = stream_config(0, args.experiences, args.train_subset, args.eval_subset, "class_balanced", root, root / "unused.json")
    callbacks = [c for c in config["trainer"]["callbacks"] if not c["class_path"].endswith("MemoryProbe")]
    callbacks.insert(0, {"class_path": "framework.callbacks.ReplayCallback",
                         "init_args": {"capacity": args.capacity, "policy": "class_balanced", "replay_batch_size": 32,
                                       "max_tasks_per_step": max_tasks_per_step}})
    config["trainer"]["callbacks"] = callbacks + [{"class_path": f"{NAME}.ScalingProbe"}]  # last: after the evaluation
    path = root / "config.generated.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = run_cli(["fit", "--config", str(path)])
    return next(c for c in cli.trainer.callbacks if type(c).__name__ == "ScalingProbe").rows


if __name__ == "__main__":
    main()
