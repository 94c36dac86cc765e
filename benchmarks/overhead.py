"""Overhead and throughput: a MedCL training step against a hand-written PyTorch loop, bf16 vs fp32,
model FLOP utilisation, and where the wall time of a whole continual run goes.

Everything runs in this one process on the shipped demo data (``data/demo/medmnist``), tiny ViT,
batch 64, ``torch.set_num_threads(--threads)``:

1. **Matmul peak**: GFLOP/s of square fp32 and bf16 ``torch.matmul`` (best of several sizes); the
   fp32 peak is the denominator of the model FLOP utilisation.
2. **Step throughput**, images per second in the steady state (the time between the ends of
   consecutive training steps, so data loading and every per-step hook are inside; steps that
   cross an epoch boundary are left out, because validation, evaluation and checkpoints are
   measured in 4):
   * hand-written loop: the same ``MedCLModel``, the same DataLoader, ``loss.backward()`` and AdamW;
   * ``medcl fit`` (the LightningCLI, in process) with no logger, no callbacks, no progress bar;
   * with replay: the hand-written loop draws 32 stored BloodMNIST exemplars into every OrganAMNIST
     batch; MedCL runs the quickstart's setup (ReplayCallback, ContinualEvaluation,
     ExperienceCheckpoint, CSV + offline W&B loggers, progress bar), measured in experience 2;
   * ``bf16-mixed`` against ``32-true`` for both, and a ``torch.profiler`` table of one bf16 step.
3. **Model FLOP utilisation**: FLOPs of one training step (``torch.utils.flop_counter``, forward +
   backward) times steps per second, over the fp32 matmul peak.
4. **Wall-clock breakdown of a whole continual run** (``experiments/quickstart.yaml`` as shipped,
   with Lightning's ``SimpleProfiler``): training steps, replay mixing, data loading, validation,
   experience-end evaluation, checkpoint writes, the rest.

Writes ``benchmarks/results/overhead.{json,md,png}``.

    python benchmarks/overhead.py                      # ~6 min on 2 idle cores
    python benchmarks/overhead.py --steps 3 --warmup 1 --bf16-steps 2 --breakdown-epochs 1 --breakdown-batches 3 --ablations replay --results /tmp/oh   # smoke run
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytorch_lightning as pl
import torch
import yaml

from runs import REPO, RESULTS, write_results, save_figure

NAME = "overhead"
DEMO = REPO / "data" / "demo" / "medmnist"
QUICKSTART = REPO / "experiments" / "quickstart.yaml"
HEAD_ARGS = {"classification": {"learn_class_embeddings": True}}


class StepClock(pl.Callback):
    """Records ``(experience, epoch, batch_idx, perf_counter, images)`` at the end of every training step."""

    def __init__(self) -> None:
        super().__init__()
        self.ends: List[tuple] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        images = sum(len(sub["target"]) for sub in batch.values())
        epoch = trainer.current_epoch
        self.ends.append((pl_module.experience_of_epoch(epoch), epoch, batch_idx, time.perf_counter(), images))


def steady_rate(ends: List[tuple], warmup: int, experience: Optional[int] = None) -> Dict[str, float]:
    """Images/s and ms/step from consecutive step ends of one epoch, after ``warmup`` steps.

    Raises:
        ValueError: if fewer than two steps are left to time.
    """
    rows = [e for e in ends if experience is None or e[0] == experience]
    intervals, images = [], 0
    for k, (prev, cur) in enumerate(zip(rows, rows[1:])):
        if k < warmup or cur[1] != prev[1]:  # warm-up, or the interval spans an epoch boundary
            continue
        intervals.append(cur[3] - prev[3])
        images += cur[4]
    if len(intervals) < 2:
        raise ValueError(f"only {len(intervals)} timed steps after a warm-up of {warmup}: give more steps")
    total = sum(intervals)
    return {"images_per_s": images / total, "ms_per_step": 1000 * total / len(intervals), "steps": len(intervals), "images_per_step": images / len(intervals)}


# ---------------------------------------------------------------------- 1. matmul peak
def matmul_rate(dtype: torch.dtype, n: int, repeats: int) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def matmul_peaks(quick: bool) -> Dict[str, Any]:
    fp32 = {n: matmul_rate(torch.float32, n, 3 if quick else 10) for n in ((256, 512) if quick else (512, 1024, 2048))}
    bf16 = {n: matmul_rate(torch.bfloat16, n, 1 if quick else 2) for n in ((128,) if quick else (256, 512))}
    return {"fp32_gflops": fp32, "bf16_gflops": bf16, "fp32_peak_gflops": max(fp32.values()), "bf16_peak_gflops": max(bf16.values())}


def cpu_features() -> Dict[str, Any]:
    from framework.precision import cpu_has_native_bf16

    info: Dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())  # the first CPU's fields
    flags = set(info.get("flags", "").split())
    return {
        "cpu": info.get("model name") or platform.processor(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "native_bf16": sorted(flags & {"avx512_bf16", "amx_bf16", "avx512fp16"}),
        "native_bf16_by_torch": cpu_has_native_bf16(),  # what MedCL's bf16 warning decides on
        "avx512f": "avx512f" in flags,
        "avx2": "avx2" in flags,
    }


# ---------------------------------------------------------------------- 2. hand-written loop
def demo_module(flag: str, **kwargs):
    from data_modules import MedMNISTDataModule

    dm = MedMNISTDataModule(flag=flag, data_dir=str(DEMO), batch_size=64, **kwargs)
    dm.setup("fit")
    return dm


def blood_model_and_batch():
    """The tiny ViT with a BloodMNIST head (seed 0) and one demo training batch ``{"image", "target"}``."""
    from framework.model import MedCLModel

    torch.manual_seed(0)
    dm = demo_module("bloodmnist")
    model = MedCLModel(backbone={"model_name": "medcl-vit-tiny"}, head_args=HEAD_ARGS)
    model.add_task(dm.task_spec)
    return model, next(iter(dm.loader("train")))["bloodmnist"]


def hand_loop(steps: int, warmup: int, replay: bool, bf16: bool, seed: int = 0) -> Dict[str, float]:
    """The same model and DataLoader as MedCL, trained by plain PyTorch: forward, loss, backward, AdamW."""
    from framework.model import MedCLModel

    torch.manual_seed(seed)
    blood, organ = demo_module("bloodmnist"), demo_module("organamnist")
    model = MedCLModel(backbone={"model_name": "medcl-vit-tiny"}, head_args=HEAD_ARGS)
    model.add_task(blood.task_spec)
    task, dm = "bloodmnist", blood
    stored = None
    if replay:
        model.add_task(organ.task_spec)
        task, dm = "organamnist", organ
        train = blood.dataset("train")
        stored = (torch.stack([train[i]["image"] for i in range(300)]), torch.stack([torch.as_tensor(train[i]["target"]) for i in range(300)]))
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    ends: List[tuple] = []
    done = 0
    while done < steps + warmup + 1:
        for batch in dm.loader("train", epoch=done):
            sub = batch[task]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.head(task).loss(model(sub["image"], task), sub["target"])
                images = len(sub["target"])
                if stored is not None:
                    idx = torch.randint(len(stored[0]), (32,), generator=generator)
                    loss = loss + model.head("bloodmnist").loss(model(stored[0][idx], "bloodmnist"), stored[1][idx])
                    images += 32
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            ends.append((0, 0, done, time.perf_counter(), images))
            done += 1
            if done >= steps + warmup + 1:
                break
    return steady_rate(ends, warmup)


# ---------------------------------------------------------------------- 2. medcl fit
def base_config(out: Path, max_epochs: int, epochs_per_experience: int) -> Dict[str, Any]:
    config = yaml.safe_load(QUICKSTART.read_text())
    config["model"]["init_args"]["epochs_per_experience"] = epochs_per_experience
    config["trainer"].update(max_epochs=max_epochs, default_root_dir=str(out))
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(out)
    return config


def run_medcl(config: Dict[str, Any], out: Path, argv: List[str] = ()):
    from framework.cli import run_cli

    out.mkdir(parents=True, exist_ok=True)
    path = out / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    start = time.perf_counter()
    cli = run_cli(["fit", "--config", str(path), *argv])
    wall = time.perf_counter() - start
    import wandb

    if wandb.run is not None:  # one W&B run per fit: the next in-process fit must not reuse it
        wandb.finish()
    return cli, wall


def clock_of(cli) -> StepClock:
    return next(c for c in cli.trainer.callbacks if type(c).__name__ == "StepClock")


def medcl_bare(out: Path, steps: int, warmup: int, precision: str) -> Dict[str, float]:
    """One domain, no logger, no callbacks but the clock, no progress bar, no validation."""
    per_epoch = 2000 // 64 + 1  # demo train split: 2,000 images
    epochs = max(1, -(-(steps + warmup + 2) // (per_epoch - 1)))
    config = base_config(out, max_epochs=epochs, epochs_per_experience=epochs)
    config["data"]["init_args"]["domains"] = config["data"]["init_args"]["domains"][:1]
    config["trainer"].update(
        logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
        num_sanity_val_steps=0, limit_val_batches=0, precision=precision,
        callbacks=[{"class_path": f"{NAME}.StepClock"}],
    )
    if epochs == 1:
        config["trainer"]["limit_train_batches"] = steps + warmup + 1
    cli, _ = run_medcl(config, out)
    return steady_rate(clock_of(cli).ends, warmup)


#: what the ablation leaves out of the full setup: name -> (label, callbacks to drop, trainer overrides)
ABLATIONS = {
    "loggers": ("without loggers (CSV, W&B)", (), {"logger": False}),
    "progress_bar": ("without the progress bar", (), {"enable_progress_bar": False}),
    "evaluation": ("without ContinualEvaluation", ("ContinualEvaluation",), {}),
    "checkpoint": ("without ExperienceCheckpoint", ("ExperienceCheckpoint",), {"enable_checkpointing": False}),
    "replay": ("without ReplayCallback (64 images per step)", ("ReplayCallback",), {}),
}


def medcl_full(out: Path, steps: int, warmup: int, drop=(), overrides: Optional[Dict[str, Any]] = None) -> Dict[str, float]:
    """The quickstart's callbacks and loggers (less ``drop``); the rate of experience 2 (OrganA + replayed Blood)."""
    per_epoch = 2000 // 64 + 1
    epochs = max(1, -(-(steps + warmup + 2) // (per_epoch - 1)))
    config = base_config(out, max_epochs=2 * epochs, epochs_per_experience=epochs)
    callbacks = [c for c in config["trainer"]["callbacks"] if c["class_path"].rsplit(".", 1)[1] not in drop]
    config["trainer"]["callbacks"] = [{"class_path": f"{NAME}.StepClock"}] + callbacks
    config["trainer"].update(overrides or {})
    if epochs == 1:
        config["trainer"]["limit_train_batches"] = steps + warmup + 2
    cli, _ = run_medcl(config, out)
    return steady_rate(clock_of(cli).ends, warmup, experience=1)


# ---------------------------------------------------------------------- 2b. why bf16 is slow
def bf16_profile(rows: int = 12) -> Dict[str, Any]:
    """``torch.profiler`` self-CPU time per operator over one fp32 and one bf16-autocast step."""
    from torch.profiler import ProfilerActivity, profile

    model, sub = blood_model_and_batch()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    out = {}
    for label, bf16 in (("fp32", False), ("bf16", True)):
        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                loss = model.head("bloodmnist").loss(model(sub["image"], "bloodmnist"), sub["target"])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        events = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in events)
        out[label] = {
            "total_ms": total / 1000,
            "top": [{"op": e.key, "self_ms": e.self_cpu_time_total / 1000, "share": e.self_cpu_time_total / total, "calls": e.count} for e in events[:rows]],
            "matmul_share": sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")) / total,
        }
    return out


# ---------------------------------------------------------------------- 3. FLOPs
def step_flops() -> Dict[str, float]:
    """FLOPs of one fp32 training step (forward + backward) at batch 64, counted by torch."""
    from torch.utils.flop_counter import FlopCounterMode

    model, sub = blood_model_and_batch()
    with FlopCounterMode(display=False) as counter:
        model.head("bloodmnist").loss(model(sub["image"], "bloodmnist"), sub["target"]).backward()
    return {"flops_per_step": counter.get_total_flops(), "batch": len(sub["target"])}


# ---------------------------------------------------------------------- 4. breakdown
def breakdown(out: Path, epochs_per_experience: Optional[int], limit_batches: Optional[int] = None) -> Dict[str, Any]:
    """The quickstart as shipped (or with fewer epochs / batches), profiled by Lightning's SimpleProfiler."""
    config = yaml.safe_load(QUICKSTART.read_text())
    if limit_batches:
        config["trainer"]["limit_train_batches"] = limit_batches
    if epochs_per_experience:
        config["model"]["init_args"]["epochs_per_experience"] = epochs_per_experience
        config["trainer"]["max_epochs"] = 2 * epochs_per_experience
    config["trainer"].update(default_root_dir=str(out), profiler="simple")
    for logger in config["trainer"]["logger"]:
        logger["init_args"]["save_dir"] = str(out)
    cli, wall = run_medcl(config, out)
    durations = cli.trainer.profiler.recorded_durations

    def total(match) -> float:
        return sum(sum(v) for k, v in durations.items() if match(k))

    parts = {
        "training steps (forward, backward, optimizer)": total(lambda k: k == "run_training_batch"),
        "replay mixing (ReplayCallback.on_train_batch_start)": total(lambda k: k == "[Callback]ReplayCallback.on_train_batch_start"),
        "data loading (train)": total(lambda k: k.endswith("train_dataloader_next")),
        "validation (every epoch)": total(lambda k: "validation" in k.lower() or k.endswith("val_next")),
        "experience-end evaluation + random-init reference (ContinualEvaluation)": total(
            lambda k: k.startswith("[Callback]ContinualEvaluation.") and k.rsplit(".", 1)[1] in ("on_experience_end", "on_train_start", "on_train_epoch_start")
        ),
        "checkpoint writes": total(lambda k: k == "save_checkpoint"),
    }
    parts["everything else (setup, dataloader reloads, logging, epoch hooks)"] = max(0.0, wall - sum(parts.values()))
    outside = sum(v for k, v in parts.items() if not k.startswith(("training steps", "replay mixing", "data loading")))
    return {"wall_s": wall, "parts_s": parts, "outside_training_share": outside / wall, "epochs": config["trainer"]["max_epochs"]}


# ---------------------------------------------------------------------- report
def markdown(r: Dict[str, Any]) -> str:
    t, m = r["throughput"], r["matmul"]
    ratio = lambda a, b: f"{t[a]['images_per_s'] / t[b]['images_per_s']:.3f}x" if a in t and b in t else "n/a"  # noqa: E731
    lines = [
        "# Overhead and throughput", "",
        f"Machine: {r['cpu']['cpu']}, {r['threads']} torch threads, torch {r['torch']}, CPU capability {r['cpu']['torch_cpu_capability']}, "
        f"native bf16 instructions: {', '.join(r['cpu']['native_bf16']) or 'none'}.  Demo data, tiny ViT (medcl-vit-tiny), batch 64 "
        f"(+32 replayed exemplars where replay is on).  Steady-state rate over {r['steps']} steps after {r['warmup']} warm-up steps.", "",
        "## Step throughput", "",
        "| run | precision | images/s | ms/step | vs hand-written loop |", "|---|---|---|---|---|",
    ]
    rows = [
        ("hand", "hand-written PyTorch loop", "32-true", None),
        ("medcl_bare", "medcl fit, no logger/callbacks", "32-true", "hand"),
        ("hand_replay", "hand-written loop + replay (32 stored exemplars per batch)", "32-true", None),
        ("medcl_full", "medcl fit + replay + every shipped callback and logger", "32-true", "hand_replay"),
        ("hand_bf16", "hand-written loop, bf16 autocast", "bf16-mixed", "hand"),
        ("medcl_bf16", "medcl fit, no logger/callbacks", "bf16-mixed", "medcl_bare"),
    ]
    for key, label, precision, ref in rows:
        if key in t:
            versus = ratio(key, ref) if ref else "1 (reference)"
            if key.endswith("bf16"):
                versus = f"{ratio(key, ref)} of its fp32 run"
            lines.append(f"| {label} | {precision} | {t[key]['images_per_s']:.1f} | {t[key]['ms_per_step']:.1f} | {versus} |")
    lines += [
        "", f"Target: with replay and every shipped callback on, MedCL's step throughput >= 0.95x the hand-written loop's: "
        f"**{ratio('medcl_full', 'hand_replay')}** ({'met' if r['targets']['full_vs_hand'] else 'MISSED'}).", "",
        "Which part of the full setup costs what (the full setup less one part; experience 2):", "",
        "| medcl fit + replay + callbacks + loggers ... | images/s | ms/step |", "|---|---|---|",
        f"| (all of them) | {t['medcl_full']['images_per_s']:.1f} | {t['medcl_full']['ms_per_step']:.1f} |",
    ]
    lines += [f"| {label} | {v['images_per_s']:.1f} | {v['ms_per_step']:.1f} |" for label, v in r.get("ablation", {}).items()]
    lines += [
        "",
        "## Matmul peak and model FLOP utilisation", "",
        "| dtype | n | GFLOP/s |", "|---|---|---|",
    ]
    lines += [f"| fp32 | {n} | {v:.1f} |" for n, v in m["fp32_gflops"].items()]
    lines += [f"| bf16 | {n} | {v:.2f} |" for n, v in m["bf16_gflops"].items()]
    f = r["flops"]
    lines += [
        "", f"One training step (forward + backward, batch {f['batch']}): {f['flops_per_step'] / 1e9:.2f} GFLOP (torch.utils.flop_counter).  "
        f"At the hand-written loop's rate that is {f['achieved_gflops_hand']:.1f} GFLOP/s and at MedCL's {f['achieved_gflops_medcl']:.1f} GFLOP/s: "
        f"**MFU {100 * f['mfu_medcl']:.1f} %** of the {m['fp32_peak_gflops']:.1f} GFLOP/s fp32 matmul peak measured in the same run.", "",
        "## Why bf16 is slow here", "",
        f"bf16 matmul peak {m['bf16_peak_gflops']:.2f} GFLOP/s against fp32 {m['fp32_peak_gflops']:.1f} GFLOP/s "
        f"({m['fp32_peak_gflops'] / m['bf16_peak_gflops']:.0f}x slower).  Share of one step's CPU time in matrix multiplications "
        f"(aten::mm/addmm/bmm): fp32 {100 * r['bf16_profile']['fp32']['matmul_share']:.0f} %, bf16 {100 * r['bf16_profile']['bf16']['matmul_share']:.0f} %.",
        "", "| bf16 step: operator | self CPU ms | share |", "|---|---|---|",
    ]
    lines += [f"| {e['op']} | {e['self_ms']:.1f} | {100 * e['share']:.1f} % |" for e in r["bf16_profile"]["bf16"]["top"][:8]]
    lines += ["", r["bf16_verdict"], ""]
    b = r["breakdown"]
    lines += [
        f"## Where a continual run's wall time goes (experiments/quickstart.yaml, {b['epochs']} epochs, SimpleProfiler)", "",
        "| part | seconds | share |", "|---|---|---|",
    ]
    lines += [f"| {k} | {v:.1f} | {100 * v / b['wall_s']:.1f} % |" for k, v in b["parts_s"].items()]
    lines += [
        f"| **whole run** | {b['wall_s']:.1f} | 100 % |", "",
        f"Target: time outside training steps (validation, evaluation, checkpoints, the rest) <= 15 % of the wall time: "
        f"**{100 * b['outside_training_share']:.1f} %** ({'met' if r['targets']['outside_share'] else 'MISSED'}).",
    ]
    return "\n".join(lines) + "\n"


def plot(r: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.3]})
    t = r["throughput"]
    keys = [k for k in ("hand", "medcl_bare", "hand_replay", "medcl_full", "hand_bf16", "medcl_bf16") if k in t]
    ax1.barh(keys, [t[k]["images_per_s"] for k in keys], color=["#888" if k.startswith("hand") else "#1f77b4" for k in keys])
    ax1.invert_yaxis()
    ax1.set_xlabel("images / s (training, steady state)")
    ax1.set_title("step throughput")
    parts = r["breakdown"]["parts_s"]
    left = 0.0
    for label, v in parts.items():
        ax2.barh([0], [v], left=left, label=f"{label.split(' (')[0]} {v:.0f} s")
        left += v
    ax2.set_yticks([])
    ax2.set_xlabel("seconds")
    ax2.set_title(f"quickstart wall time {r['breakdown']['wall_s']:.0f} s")
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.25), ncols=2)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40, help="timed steps per throughput run")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--bf16-steps", type=int, default=4, help="timed steps of the (slow) bf16 runs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--breakdown-epochs", type=int, default=None, help="epochs per experience of the profiled quickstart (default: as shipped)")
    parser.add_argument("--breakdown-batches", type=int, default=None, help="training batches per epoch of the profiled quickstart (smoke runs)")
    parser.add_argument("--ablations", nargs="*", default=list(ABLATIONS), choices=list(ABLATIONS), help="parts of the full setup to leave out one at a time (default: all)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    for flag in ("steps", "bf16_steps"):  # steady_rate needs two timed intervals
        if getattr(args, flag) < 2:
            parser.error(f"--{flag.replace('_', '-')} expected >= 2 timed steps, found {getattr(args, flag)}")
    os.chdir(REPO)  # the quickstart's data paths are relative to the repository
    torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}", flush=True)
    quick = args.steps < 20
    work = REPO / "runs" / "benchmarks" / NAME
    r: Dict[str, Any] = {"threads": torch.get_num_threads(), "torch": torch.__version__, "cpu": cpu_features(), "steps": args.steps, "warmup": args.warmup}
    r["matmul"] = matmul_peaks(quick)
    print("matmul", r["matmul"], flush=True)
    t = r["throughput"] = {}
    t["hand"] = hand_loop(args.steps, args.warmup, replay=False, bf16=False)
    t["medcl_bare"] = medcl_bare(work / "bare", args.steps, args.warmup, "32-true")
    t["hand_replay"] = hand_loop(args.steps, args.warmup, replay=True, bf16=False)
    t["medcl_full"] = medcl_full(work / "full", args.steps, args.warmup)
    print(f"hand + replay {t['hand_replay']}\nmedcl full {t['medcl_full']}", flush=True)
    r["ablation"] = {}
    for name in args.ablations:
        label, drop, overrides = ABLATIONS[name]
        r["ablation"][label] = medcl_full(work / f"ablation_{name}", args.steps, args.warmup, drop, overrides)
        print(f"ablation, {label}: {r['ablation'][label]}", flush=True)
    t["hand_bf16"] = hand_loop(args.bf16_steps, 1, replay=False, bf16=True)
    t["medcl_bf16"] = medcl_bare(work / "bf16", args.bf16_steps, 1, "bf16-mixed")
    print("throughput", json.dumps(t, indent=1), flush=True)
    r["bf16_profile"] = bf16_profile()
    slow = t["medcl_bare"]["images_per_s"] / t["medcl_bf16"]["images_per_s"]
    native = r["cpu"]["native_bf16"] if r["cpu"]["native_bf16_by_torch"] else []
    r["bf16_verdict"] = (
        f"bf16-mixed trains {slow:.1f}x slower than 32-true on this CPU. "
        + ("It has no native bf16 instructions (no AVX512-BF16 / AMX): torch's bf16 matrix multiplications fall back to a "
           "slow path, so autocast moves most of the step into kernels that are far slower than fp32's. " if not native else
           f"The CPU has {', '.join(native)}, so the slowdown comes from the operators in the table above. ")
        + "MedCL therefore ships precision 32-true (Lightning's default) in every config and warns when bf16 is requested on a "
        "CPU without native bf16."
    )
    flops = step_flops()
    hand_steps = t["hand"]["images_per_s"] / 64
    medcl_steps = t["medcl_bare"]["images_per_s"] / 64
    flops["achieved_gflops_hand"] = flops["flops_per_step"] * hand_steps / 1e9
    flops["achieved_gflops_medcl"] = flops["flops_per_step"] * medcl_steps / 1e9
    flops["mfu_medcl"] = flops["achieved_gflops_medcl"] / r["matmul"]["fp32_peak_gflops"]
    r["flops"] = flops
    r["breakdown"] = breakdown(work / "breakdown", args.breakdown_epochs, args.breakdown_batches)
    r["targets"] = {
        "full_vs_hand": t["medcl_full"]["images_per_s"] / t["hand_replay"]["images_per_s"] >= 0.95,
        "outside_share": r["breakdown"]["outside_training_share"] <= 0.15,
    }
    write_results(args.results, NAME, r, markdown, plot)


if __name__ == "__main__":
    main()
