"""Speed on the machine you have: the quickstart's training step with torch.compile, channels-last and bf16, side by side.

Every variant trains the quickstart's first domain (BloodMNIST demo subset, tiny ViT, batch 64) in
this one process, ``benchmarks/overhead.py``'s bare MedCL run (no logger, no callbacks but a step
clock, no validation), and reports steady-state images per second after ``--warmup`` steps (which
hold the compilation of the compiled variants); the variants are repeated ``--repeats`` times,
interleaved, and the median is reported with its range:

* **fp32** (``32-true``): today's default, the reference;
* **fp32 + torch.compile (tower)**: :class:`framework.callbacks.CompileModels` on the image tower;
* **fp32 + torch.compile (tower + heads)**;
* **bf16-mixed + math attention** and the same **+ torch.compile**: only on a CPU with native bf16
  (AMX or AVX512-BF16; on others torch's bf16 matmuls take a slow path, benchmarks/overhead.py), else
  listed as not run, with the reason.

Channels-last is not a variant: it changes the memory layout of convolutions, and the tiny ViT's only
convolution is its patch embedding (one layer, stride = kernel): there is nothing for it to speed up.

Then the fastest variant and the reference each train the whole quickstart (both domains, replay,
evaluation) for ``--seeds`` seeds: the table gives average accuracy and forgetting, so a faster
variant is taken only at equal accuracy.

    python benchmarks/speed.py                          # about 40 min on 2 idle cores
    python benchmarks/speed.py --steps 4 --warmup 2 --repeats 1 --seeds 0 --quickstart-epochs 1 --results /tmp/sp   # smoke run

Results: ``benchmarks/results/speed.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from statistics import median
from typing import Any, Dict, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from overhead import base_config, medcl_bare, run_medcl  # noqa: E402
from runs import REPO, RESULTS, cpu_model, latest_metrics, save_figure, write_results  # noqa: E402

NAME = "speed"
COMPILE_TOWER = [{"class_path": "framework.callbacks.CompileModels", "init_args": {"heads": False}}]
COMPILE_ALL = [{"class_path": "framework.callbacks.CompileModels", "init_args": {"heads": True}}]
#: name -> (label, precision, math attention, extra callbacks, needs native bf16)
VARIANTS = {
    "fp32": ("fp32 (32-true, today's default)", "32-true", False, [], False),
    "fp32_compile": ("fp32 + torch.compile (tower)", "32-true", False, COMPILE_TOWER, False),
    "fp32_compile_all": ("fp32 + torch.compile (tower + heads)", "32-true", False, COMPILE_ALL, False),
    "bf16_math": ("bf16-mixed + math attention", "bf16-mixed", True, [], True),
    "bf16_math_compile": ("bf16-mixed + math attention + torch.compile (tower)", "bf16-mixed", True, COMPILE_TOWER, True),
}


def quickstart(variant: str, seed: int, epochs: Optional[int], out: Path) -> Dict[str, Any]:
    """The whole quickstart (both domains, replay, evaluation) under ``variant``; average accuracy and forgetting."""
    _, precision, math_attention, callbacks, _ = VARIANTS[variant]
    config = base_config(out, max_epochs=2 * (epochs or 5), epochs_per_experience=epochs or 5)
    config["seed_everything"] = seed
    config["trainer"].update(precision=precision, enable_progress_bar=False, logger=False)
    extra = list(callbacks) + ([{"class_path": "framework.callbacks.AttentionKernel", "init_args": {"backends": ["math"]}}] if math_attention else [])
    config["trainer"]["callbacks"] = extra + config["trainer"]["callbacks"]
    _, wall = run_medcl(config, out)
    result = json.loads(latest_metrics(out).read_text())
    return {"average_accuracy": result["average_accuracy"], "forgetting": result["forgetting"], "wall_s": wall}


def markdown(r: Dict[str, Any]) -> str:
    lines = [
        "# Speed: the quickstart's training step with torch.compile and bf16, side by side", "",
        f"`python benchmarks/speed.py`; CPU: {r['cpu']} (native bf16: {r['native_bf16']}), {r['threads']} torch threads; "
        f"one process, {r['repeats']} interleaved repeats of {r['steps']} timed steps after {r['warmup']} warm-up steps "
        "(the compilation happens in the warm-up).  Bare MedCL run on BloodMNIST (batch 64, tiny ViT).", "",
        "| variant | images/s (median) | range | vs fp32 |", "|---|---|---|---|",
    ]
    base = r["throughput"]["fp32"]["median"]
    for key, (label, *_rest) in VARIANTS.items():
        row = r["throughput"].get(key)
        if row is None:
            lines.append(f"| {label} | not run | | {r['skipped'].get(key, '')} |")
            continue
        lines.append(f"| {label} | {row['median']:.0f} | {min(row['all']):.0f}–{max(row['all']):.0f} | {row['median'] / base:.2f}x |")
    lines += ["", f"Accuracy of the whole quickstart, seeds {r['seeds']} (mean over seeds):", "",
              "| variant | average accuracy | forgetting | wall (s) |", "|---|---|---|---|"]
    for key, runs in r["quickstart"].items():
        acc = [x["average_accuracy"] for x in runs.values()]
        fgt = [x["forgetting"] for x in runs.values()]
        wall = [x["wall_s"] for x in runs.values()]
        lines.append(f"| {VARIANTS[key][0]} | {sum(acc) / len(acc):.4f} | {sum(fgt) / len(fgt):.4f} | {sum(wall) / len(wall):.0f} |")
    return "\n".join(lines) + "\n"


def plot(r: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in VARIANTS if k in r["throughput"]]
    fig, ax = plt.subplots(figsize=(6.5, 3.2))
    ax.barh([VARIANTS[k][0] for k in keys], [r["throughput"][k]["median"] for k in keys], color="tab:blue")
    ax.set_xlabel("training images/s (median)")
    ax.invert_yaxis()
    ax.set_title(f"Quickstart training step, {r['cpu']}", fontsize=8)
    save_figure(fig, path)


def main() -> None:
    import torch

    from framework.precision import cpu_has_native_bf16

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--quickstart-epochs", type=int, default=None, help="epochs per experience of the accuracy runs (default: the quickstart's 5)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    native = cpu_has_native_bf16()
    runs_dir = REPO / "runs" / "benchmarks" / NAME
    rates: Dict[str, List[float]] = {}
    skipped = {k: "the CPU has no native bf16 (AMX or AVX512-BF16): bf16 matmuls take a slow path" for k, v in VARIANTS.items() if v[4] and not native}
    for repeat in range(args.repeats):
        for key, (label, precision, math_attention, callbacks, needs_bf16) in VARIANTS.items():
            if key in skipped:
                continue
            print(f"=== {label}, repeat {repeat + 1}/{args.repeats}", flush=True)
            rate = medcl_bare(runs_dir / key / str(repeat), args.steps, args.warmup, precision, math_attention, extra_callbacks=callbacks)
            rates.setdefault(key, []).append(rate["images_per_s"])
    throughput = {k: {"median": median(v), "all": v} for k, v in rates.items()}
    fastest = max(throughput, key=lambda k: throughput[k]["median"])
    accuracy: Dict[str, Dict[str, Any]] = {}
    for key in dict.fromkeys(["fp32", fastest]):
        for seed in args.seeds:
            print(f"=== quickstart, {VARIANTS[key][0]}, seed {seed}", flush=True)
            accuracy.setdefault(key, {})[str(seed)] = quickstart(key, seed, args.quickstart_epochs, runs_dir / f"quickstart_{key}" / str(seed))
    result = {"cpu": cpu_model(), "native_bf16": native, "threads": args.threads, "steps": args.steps, "warmup": args.warmup,
              "repeats": args.repeats, "seeds": args.seeds, "throughput": throughput, "skipped": skipped, "fastest": fastest,
              "quickstart": accuracy}
    write_results(args.results, NAME, result, markdown, plot)


if __name__ == "__main__":
    main()
