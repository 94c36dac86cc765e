"""A CT collection larger than memory: one experience trained through it, peak RSS as the collection doubles.

Generated data (nothing here is patient data): ``--volumes`` synthetic CT volumes (512 x 512 x 64
int16 HU, 0.7 x 0.7 x 2.5 mm, uncompressed ``.nii``, with organ masks) written to
``runs/benchmarks/large_collection/volumes/`` by ``data_modules.synthetic.write_large_ct``.  For
each collection size (the first N volumes, then 2N) a fresh Python process trains the quickstart's
model (tiny ViT from scratch) on one experience: a :class:`data_modules.VolumeDataModule` task
(abdomen window, resampled to 5.6 x 5.6 x 10 mm, padded/cropped to 16 x 64 x 64, disk cache in a
fresh folder, 80/10/10 split), ``epochs_per_experience`` 2 with batch 4:

* epoch 1 is **cold**: every volume is read from its NIfTI file, windowed and resampled, and its
  result written to the cache;
* epoch 2 is **warm**: every item comes from the disk cache;
* the same items held in memory as an ``.npz`` (uint8, the path MedMNIST data take,
  :class:`~data_modules.SegmentationDataModule`) give the in-memory speed.

Peak RSS is the largest resident set of the training process (``ru_maxrss`` of the child),
images per second count training volumes per second of epoch wall time.  The collection's size on
disk is compared with the peak RSS: the must-show asks for at least 3x.  Files just written may
still sit in the page cache, so "cold" mostly measures decoding and resampling, not disk reads
(the machine's page cache is not dropped).  Timings depend on the CPU and its load (named in the results).

    python benchmarks/large_collection.py                       # N = 150 (6 GiB) and 300 volumes (about 35 min)
    python benchmarks/large_collection.py --volumes 8 16 --shape 128 128 32 --results /tmp/lc   # smoke run

Results: ``benchmarks/results/large_collection.{json,md,png}``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List

import pytorch_lightning as pl

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # EpochClock is named by class_path large_collection.EpochClock
os.environ.setdefault("WANDB_MODE", "offline")

from runs import RESULTS, cpu_model, save_figure, write_results  # noqa: E402

NAME = "large_collection"
RUNS = REPO / "runs" / "benchmarks" / NAME
SPACING = (0.7, 0.7, 2.5)
TARGET_SPACING = [5.6, 5.6, 10.0]
SPATIAL_SIZE = [16, 64, 64]


class EpochClock(pl.Callback):
    """Wall seconds of every training epoch, and the number of training items it saw."""

    def __init__(self) -> None:
        self.seconds: List[float] = []
        self.items: List[int] = []
        self._start = 0.0
        self._count = 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start, self._count = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._count += sum(int(v["image"].shape[0]) for v in batch.values())

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.seconds.append(time.perf_counter() - self._start)
        self.items.append(self._count)


def config(domain: Dict[str, Any], out: Path) -> Dict[str, Any]:
    from config_files import load_config  # the files the experiment names, inlined

    base = load_config(REPO / "experiments" / "quickstart.yaml")
    base["model"]["init_args"].update(epochs_per_experience=2, head_args={"segmentation": {"feature_size": 8}})
    base["data"]["init_args"]["domains"] = [domain]
    trainer = base["trainer"]
    trainer.update(max_epochs=2, default_root_dir=str(out), enable_progress_bar=False, enable_model_summary=False,
                   num_sanity_val_steps=0, limit_val_batches=0, logger=False)
    trainer["callbacks"] = [{"class_path": "large_collection.EpochClock"}]
    return base


def worker(config_path: Path, out: Path) -> None:
    from framework.cli import run_cli

    cli = run_cli(["fit", "--config", str(config_path)])
    (clock,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "EpochClock"]
    out.write_text(json.dumps({"epoch_s": clock.seconds, "epoch_items": clock.items}))


def run(name: str, domain: Dict[str, Any]) -> Dict[str, Any]:
    import yaml

    folder = RUNS / name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config(domain, folder / "run"), sort_keys=False))
    out = folder / "row.json"
    print(f"=== {name}", flush=True)
    child = subprocess.Popen([sys.executable, __file__, "--worker", str(path), str(out)], cwd=REPO,
                             env=dict(os.environ, PYTHONPATH=f"{REPO}{os.pathsep}{REPO / 'benchmarks'}"))
    _, status, usage = os.wait4(child.pid, 0)  # this child's own resource usage (RUSAGE_CHILDREN would be the largest so far)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit(f"{name}: the training process failed (exit code {child.returncode}); see its output above")
    row = json.loads(out.read_text())
    row["peak_rss_mib"] = round(usage.ru_maxrss / 1024.0, 1)
    row["images_per_s"] = [round(n / s, 2) for n, s in zip(row["epoch_items"], row["epoch_s"])]
    return row


def make_volumes(count: int, shape: List[int]) -> List[Path]:
    from data_modules.synthetic import write_large_ct

    folder = RUNS / f"volumes_{'x'.join(map(str, shape))}"
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, mask = folder / f"case_{i:04d}.nii", folder / f"case_{i:04d}_mask.nii"
        if not (image.is_file() and mask.is_file()):
            image.unlink(missing_ok=True)
            mask.unlink(missing_ok=True)
            write_large_ct(image, shape, SPACING, seed=i, mask_path=mask)
        paths.append(image)
        if (i + 1) % 20 == 0:
            print(f"  {i + 1}/{count} volumes on disk", flush=True)
    return paths


def manifest(paths: List[Path], name: str) -> Path:
    n = len(paths)
    rows = ["image,mask,split"]
    for i, image in enumerate(paths):
        split = "train" if i < int(0.8 * n) else "val" if i < int(0.9 * n) else "test"
        rows.append(f"{image.name},{image.name.replace('.nii', '_mask.nii')},{split}")
    path = paths[0].parent / f"{name}.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def volume_domain(table: Path, cache: Path) -> Dict[str, Any]:
    return {"class_path": "data_modules.VolumeDataModule", "init_args": {
        "table": str(table), "task_name": "ct_organ", "label_names": ["organ"], "intensity": "ct:abdomen",
        "spacing": TARGET_SPACING, "spatial_size": SPATIAL_SIZE, "cache": "disk", "cache_dir": str(cache), "batch_size": 4}}


def npz_from(table: Path, cache: Path, out: Path) -> Path:
    """The collection's items (from the disk cache) as one in-memory ``.npz`` (uint8 images, split by the manifest)."""
    import numpy as np

    from data_modules.volumes import VolumeDataModule

    dm = VolumeDataModule(**{k: v for k, v in volume_domain(table, cache)["init_args"].items()}, augment=False)
    dm.setup("fit")
    images, masks, splits = [], [], []
    for code, split in enumerate(("train", "val", "test")):
        for i in range(len(dm.dataset(split))):
            item = dm.dataset(split)[i]
            images.append((item["image"][0].numpy() * 255).round().astype(np.uint8))
            masks.append(item["target"].numpy().astype(np.uint8))
            splits.append(code)
    np.savez(out, images=np.stack(images), masks=np.stack(masks), split=np.array(splits, dtype=np.int64))
    return out


def markdown(result: Dict[str, Any]) -> str:
    lines = [
        "# A CT collection larger than memory: one experience, peak RSS as the collection doubles", "",
        f"`python benchmarks/large_collection.py`; CPU: {result['cpu']} ({result['note']}).  Synthetic CT volumes "
        f"{' x '.join(map(str, result['shape']))} (int16 HU, uncompressed `.nii`, with masks), read by `VolumeDataModule` "
        f"(abdomen window, resampled to {' x '.join(map(str, TARGET_SPACING))} mm, {' x '.join(map(str, SPATIAL_SIZE))} voxels, "
        f"disk cache), quickstart model, one experience of 2 epochs, batch 4.  Epoch 1 reads every file (cold), epoch 2 "
        f"the cache (warm); `npz` holds the same items in memory.  Files just written may be in the page cache.", "",
        "| source | volumes | on disk (GiB) | peak RSS (GiB) | disk / peak RSS | cold images/s | warm images/s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        ratio = row["disk_gib"] / (row["peak_rss_mib"] / 1024) if row.get("disk_gib") else None
        cold, warm = (row["images_per_s"] + [None, None])[:2]
        lines.append(
            f"| {row['source']} | {row['volumes']} | {row['disk_gib']:.2f} | {row['peak_rss_mib'] / 1024:.2f} | "
            f"{'n/a' if ratio is None else f'{ratio:.1f}x'} | {cold if row['source'] != 'npz (in memory)' else 'n/a'} | {warm} |"
        )
    return "\n".join(lines) + "\n"


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in result["rows"] if r["source"] == "NIfTI files"]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot([r["disk_gib"] for r in rows], [r["peak_rss_mib"] / 1024 for r in rows], marker="o", label="peak RSS")
    ax.plot([r["disk_gib"] for r in rows], [r["disk_gib"] for r in rows], ls="--", color="grey", label="collection size")
    ax.set_xlabel("collection on disk (GiB)")
    ax.set_ylabel("GiB")
    ax.set_title("Training through a CT collection: peak memory")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volumes", type=int, nargs="+", default=[150, 300])
    parser.add_argument("--shape", type=int, nargs=3, default=[512, 512, 64])
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="how busy the CPU was, for the table")
    parser.add_argument("--worker", nargs=2, metavar=("CONFIG", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), Path(args.worker[1]))
        return
    paths = make_volumes(max(args.volumes), args.shape)
    rows: List[Dict[str, Any]] = []
    for n in sorted(args.volumes):
        table = manifest(paths[:n], f"collection_{n}")
        cache = RUNS / f"cache_{n}"
        shutil.rmtree(cache, ignore_errors=True)
        row = run(f"files_{n}", volume_domain(table, cache))
        row.update(source="NIfTI files", volumes=n,
                   disk_gib=sum(p.stat().st_size + Path(str(p).replace(".nii", "_mask.nii")).stat().st_size for p in paths[:n]) / 2**30)
        rows.append(row)
    n = min(args.volumes)
    npz = npz_from(paths[0].parent / f"collection_{n}.csv", RUNS / f"cache_{n}", RUNS / f"collection_{n}.npz")
    row = run(f"npz_{n}", {"class_path": "data_modules.SegmentationDataModule", "init_args": {
        "file": str(npz), "task_name": "ct_organ", "label_names": ["organ"], "in_channels": 1, "spatial_dims": 3,
        "image_size": SPATIAL_SIZE[-1], "batch_size": 4}})
    row.update(source="npz (in memory)", volumes=n, disk_gib=npz.stat().st_size / 2**30)
    rows.append(row)
    result = {"cpu": cpu_model(), "shape": args.shape, "note": args.note or "see the commit", "rows": rows}
    write_results(args.results, NAME, result, markdown, plot)


if __name__ == "__main__":
    main()
