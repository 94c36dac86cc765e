"""MedCL on a CUDA machine: three checks, each printing images per second and peak GPU memory.

1. **quickstart, bf16**: ``experiments/quickstart.yaml`` with ``experiments/trainer/gpu.yaml``
   (BloodMNIST then OrganAMNIST with replay, tiny ViT, ``bf16-mixed``), one GPU;
2. **DDP**: the same 2-experience stream with replay on every visible GPU
   (``experiments/trainer/ddp.yaml``: one process per GPU; images per second summed over processes);
3. **ViT-B/16 at 224 px**: training steps of a ViT-B/16-sized open_clip tower (random weights,
   nothing downloaded) with a classification head, batch 32, bf16 autocast, AdamW.

Run it with ``scripts/gpu_check.sh`` (the same, with the project's Python).  ``--smoke`` runs the
same code on the CPU with tiny settings (2 CPU processes for "DDP", 64 px for the ViT-B step):
it checks the script, not a GPU (tests/test_gpu_check.py runs it).  With ``--out DIR`` the results
are also written to ``DIR/gpu_check.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402


class Throughput(pl.Callback):
    """Training images per second (after the first 5 steps of the run) and peak GPU memory; rank 0 writes them to ``out``."""

    def __init__(self, out: str, warmup: int = 5) -> None:
        self.out = out
        self.warmup = warmup
        self.images = 0
        self.steps = 0
        self.start = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.steps == self.warmup:
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.steps += 1
        if self.start is not None:
            self.images += sum(int(v["image"].shape[0]) for v in batch.values() if isinstance(v, dict) and "image" in v)

    def on_train_end(self, trainer, pl_module) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        seconds = time.perf_counter() - self.start if self.start is not None else float("nan")
        rate = torch.tensor([self.images / seconds if seconds > 0 else 0.0], dtype=torch.float64, device=pl_module.device)
        peak = torch.tensor([torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else 0.0],
                            dtype=torch.float64, device=pl_module.device)
        rates, peaks = trainer.strategy.all_gather(rate), trainer.strategy.all_gather(peak)  # one value per process
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps({
                "images_per_s": float(rates.sum()), "processes": int(rates.numel()),
                "peak_gpu_memory_gib": float(peaks.max()), "timed_steps": self.steps - self.warmup,
            }))


def _fit(name: str, presets: List[str], extra: List[str], work: Path) -> Dict[str, Any]:
    out = work / f"{name}.json"
    out.unlink(missing_ok=True)
    callback = json.dumps([{"class_path": "gpu_check.Throughput", "init_args": {"out": str(out)}}])
    cmd = [sys.executable, "-m", "framework.cli", "fit", "--config", str(REPO / "experiments" / "quickstart.yaml")]
    for preset in presets:
        cmd += ["--config", str(REPO / "experiments" / "trainer" / f"{preset}.yaml")]
    cmd += [f"--trainer.default_root_dir={work / name}", "--trainer.logger=false", "--trainer.enable_progress_bar=false",
            f"--trainer.callbacks+={callback}", *extra]
    print(f"\n=== {name}: {' '.join(cmd[2:])}", flush=True)
    env = dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'scripts'}", WANDB_MODE="offline")
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True)
    result = json.loads(out.read_text())
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def vit_b16_step(smoke: bool) -> Dict[str, Any]:
    """Training steps of a ViT-B/16 open_clip tower with a classification head (random weights)."""
    from framework.model import MedCLModel
    from framework.core.specs import TaskSpec

    device = torch.device("cpu" if smoke else "cuda")
    size, batch, steps = (64, 2, 2) if smoke else (224, 32, 10)
    torch.manual_seed(0)
    model = MedCLModel({"model_name": "ViT-B-16", "image_size": size})
    model.add_task(TaskSpec(name="toy", kind="classification", class_names=("a", "b", "c"), in_channels=3, image_size=(size, size)))
    model.to(device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images = torch.rand(batch, 3, size, size, device=device)
    target = torch.randint(0, 3, (batch,), device=device)
    dtype = torch.bfloat16

    def step() -> None:
        with torch.autocast(device.type, dtype=dtype):
            loss = model.head("toy").loss(model(images, "toy"), target)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in model.backbone.clip.visual.parameters())
    return {"images_per_s": batch * steps / seconds, "processes": 1, "timed_steps": steps, "image_tower_parameters": params,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0,
            "input": f"{batch} x 3 x {size} x {size}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="run the same code on the CPU with tiny settings (checks the script)")
    parser.add_argument("--out", type=Path, default=None, help="also write gpu_check.json here")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "gpu_check")
    args = parser.parse_args()
    if not args.smoke and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device is visible (torch.cuda.is_available() is False); run it on a GPU machine, "
                         "or with --smoke to check the script on the CPU")
    args.work.mkdir(parents=True, exist_ok=True)
    devices = torch.cuda.device_count() if not args.smoke else 2
    info = {"torch": torch.__version__, "cuda": torch.version.cuda,
            "gpus": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []}
    shrink = ["--trainer.limit_train_batches=8", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
              "--model.init_args.epochs_per_experience=1", "--trainer.max_epochs=2"] if args.smoke else []
    results: Dict[str, Any] = {"machine": info}
    single = ["cpu"] if args.smoke else ["gpu"]
    results["quickstart (bf16-mixed, 1 GPU)" if not args.smoke else "quickstart (smoke, CPU)"] = _fit(
        "quickstart", single, shrink + (["--trainer.precision=bf16-mixed"] if args.smoke else []), args.work)
    ddp = ["cpu"] if args.smoke else ["ddp"]
    ddp_extra = ["--trainer.strategy=ddp", "--trainer.devices=2"] if args.smoke else []
    results[f"2-experience stream with replay, DDP on {devices} {'GPU' if not args.smoke else 'CPU process'}(s)"] = _fit(
        "ddp", ddp, shrink + ddp_extra, args.work)
    results["ViT-B/16 tower at 224 px, training step (bf16)" if not args.smoke else "ViT-B/16 tower at 64 px (smoke, CPU)"] = vit_b16_step(args.smoke)
    print("\n" + json.dumps(results, indent=2))
    print("\n| check | processes | images/s | peak GPU memory (GiB) |\n|---|---|---|---|")
    for name, row in results.items():
        if name != "machine":
            print(f"| {name} | {row['processes']} | {row['images_per_s']:.1f} | {row['peak_gpu_memory_gib']:.2f} |")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "gpu_check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
