"""A 512 x 512 x N synthetic CT encoded and segmented: peak memory slab by slab, against the whole volume at once.

For every N (100, 200, 300 slices by default) a synthetic CT (int16 HU, uncompressed ``.nii``,
0.7 x 0.7 x 2.5 mm, written slab by slab by ``data_modules.synthetic.write_large_ct``) is
processed in a fresh Python process, so each peak is its own:

* **slabs**: :class:`data_modules.volume_slabs.NiftiSlabs` (positioned reads, 16 axial slices per
  slab, abdomen window) -> :func:`framework.volume_inference.segment_volume_slabs` with a
  :class:`~data_modules.volume_slabs.NiftiSlabWriter` (labels on disk), then
  :func:`~framework.volume_inference.encode_volume_slabs`;
* **whole**: the volume read whole (``data_modules.io.read_array``), scaled, laid out axially and
  passed to the model at once (``torch.no_grad``; the backbone still micro-batches its slices).

The model is MedCL's tiny ViT with a 3D segmentation task at 64 px: every 512 x 512 slice is
segmented by MONAI sliding windows of 64 px (``window_overlap`` 0: 64 windows per slice) at full
resolution and encoded by 64-px tiles.  Weights are random: this measures memory and time, not
accuracy.  Peak RSS is ``VmHWM`` of ``/proc/self/status``; "model RSS" is the RSS after the model is
built, before the volume is touched.  Timings depend on the CPU and its load (named in the results).

    python benchmarks/volume_memory.py                       # N = 100, 200, 300 (about 1 h on 2 busy cores)
    python benchmarks/volume_memory.py --whole-slices 100 200  # the whole-volume mode at 100 and 200 slices only
    python benchmarks/volume_memory.py --reuse whole           # measure the slabs again, keep the whole-volume rows
    python benchmarks/volume_memory.py --append --modes slabs --slices 100 300 --malloc-mmap-threshold 1048576   # add rows with a fixed glibc mmap threshold
    python benchmarks/volume_memory.py --slices 20 40 --side 128 --results /tmp/vm   # smoke run

Results: ``benchmarks/results/volume_memory.{json,md,png}``; volumes in ``runs/benchmarks/volume_memory/``.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))

from runs import RESULTS, cpu_model, save_figure, write_results  # noqa: E402

NAME = "volume_memory"
RUNS = REPO / "runs" / "benchmarks" / NAME
SLAB = 16
TASK_SIZE = 64


def _status(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def worker(path: Path, mode: str, out: Path) -> None:
    """One measurement in this (fresh) process; writes a JSON row to ``out``."""
    import numpy as np
    import torch

    from data_modules.io import read_array, to_axial
    from data_modules.intensity import parse_intensity
    from data_modules.volume_slabs import NiftiSlabs, NiftiSlabWriter
    from framework.model import MedCLModel
    from framework.core.specs import TaskSpec
    from framework.volume_inference import encode_volume_slabs, segment_volume_slabs

    torch.manual_seed(0)
    model = MedCLModel({"model_name": "medcl-vit-tiny"}, {"segmentation": {"feature_size": 8, "window_overlap": 0.0}})
    model.add_task(TaskSpec(name="organ", kind="segmentation", label_names=("organ",), in_channels=1, spatial_dims=3,
                            image_size=(TASK_SIZE, TASK_SIZE), intensity="ct:abdomen", depth_axis="axial"))
    model.eval()
    model_rss = _status("VmRSS")
    start = time.perf_counter()
    if mode == "slabs":
        slabs = NiftiSlabs(path, slab=SLAB, intensity="ct:abdomen")
        mask_path = out.with_suffix(".mask.nii")
        mask_path.unlink(missing_ok=True)
        foreground = 0
        with NiftiSlabWriter(mask_path, slabs.shape, slabs.affine) as writer:
            def write(start_slice: int, labels: np.ndarray) -> None:
                nonlocal foreground
                foreground += int(np.count_nonzero(labels))  # counted per slab: reading the mask back would hold it whole
                writer.write(start_slice, labels)

            slices = segment_volume_slabs(model, "organ", slabs, write, progress=True)
        segment_s = time.perf_counter() - start
        embedding = encode_volume_slabs(model, "organ", NiftiSlabs(path, slab=SLAB, intensity="ct:abdomen"), progress=True)
        mask_path.unlink()
    else:
        volume = torch.from_numpy(np.ascontiguousarray(to_axial(parse_intensity("ct:abdomen").apply(read_array(path), path))))[None]
        slices = volume.shape[2]
        with torch.no_grad():
            labels = model(volume, "organ")[0].argmax(0).to(torch.uint8)
            segment_s = time.perf_counter() - start
            with model.route(model.specs["organ"]):
                embedding = model.backbone.encode_image(volume)[0]
        foreground = int(labels.count_nonzero())
    total_s = time.perf_counter() - start
    row = {
        "mode": mode, "slices": int(slices), "model_rss_mib": round(model_rss, 1), "peak_rss_mib": round(_status("VmHWM"), 1),
        "segment_s": round(segment_s, 1), "total_s": round(total_s, 1), "slices_per_s": round(slices / segment_s, 3),
        "foreground_voxels": foreground, "embedding_norm": round(float(embedding.norm()), 4), "threads": torch.get_num_threads(),
        "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_"),
    }
    out.write_text(json.dumps(row))


def markdown(result: Dict[str, Any]) -> str:
    side = result["side"]
    lines = [
        f"# A {side} x {side} x N synthetic CT, encoded and segmented: peak memory", "",
        f"`python benchmarks/volume_memory.py`; CPU: {result['cpu']}, {result['threads']} torch thread(s) "
        f"({result['note']}).  Tiny ViT with a 3D segmentation task at {TASK_SIZE} px: every slice segmented by "
        f"sliding windows of {TASK_SIZE} px at full resolution (overlap 0) and encoded by {TASK_SIZE}-px tiles; random "
        f"weights (memory and time, not accuracy).  **slabs**: `.nii` read {SLAB} axial slices at a "
        f"time, labels written slab by slab into a `.nii`; **whole**: the volume read, scaled and passed at once.", "",
        "| slices | mode | MALLOC_MMAP_THRESHOLD_ | volume on disk (MiB) | model RSS (MiB) | peak RSS (MiB) | peak - model (MiB) | segmentation (s) | slices/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['slices']} | {row['mode']}{' (earlier run)' if row.get('reused') else ''} | {row.get('malloc_mmap_threshold') or 'glibc default'} | {row['volume_mib']:.0f} | {row['model_rss_mib']:.0f} | {row['peak_rss_mib']:.0f} | "
            f"{row['peak_rss_mib'] - row['model_rss_mib']:.0f} | {row['segment_s']:.0f} | {row['slices_per_s']:.2f} |"
        )
    for setting, rows in _series(result, "slabs").items():
        if len(rows) >= 2:
            growth = rows[-1]["peak_rss_mib"] - rows[0]["peak_rss_mib"]
            lines += ["", f"Slab by slab ({setting}), peak RSS changes by {growth:+.0f} MiB from {rows[0]['slices']} to {rows[-1]['slices']} slices."]
    return "\n".join(lines) + "\n"


def _series(result: Dict[str, Any], mode: str) -> Dict[str, List[Dict[str, Any]]]:
    """``mode``'s rows grouped by their malloc setting, in order of slices."""
    out: Dict[str, List[Dict[str, Any]]] = {}
    for row in sorted((r for r in result["rows"] if r["mode"] == mode), key=lambda r: r["slices"]):
        threshold = row.get("malloc_mmap_threshold")
        out.setdefault("glibc default" if not threshold else f"MALLOC_MMAP_THRESHOLD_={threshold}", []).append(row)
    return out


def plot(result: Dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for mode, marker in (("slabs", "o"), ("whole", "s")):
        for setting, rows in _series(result, mode).items():
            label = mode if setting == "glibc default" else f"{mode}, {setting}"
            ax.plot([r["slices"] for r in rows], [r["peak_rss_mib"] - r["model_rss_mib"] for r in rows], marker=marker, label=label)
    ax.set_xlabel(f"slices ({result['side']} x {result['side']} each)")
    ax.set_ylabel("peak RSS above the model's (MiB)")
    ax.set_title("Peak memory while segmenting one CT volume")
    ax.legend()
    ax.grid(alpha=0.3)
    save_figure(fig, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--slices", type=int, nargs="+", default=[100, 200, 300])
    parser.add_argument("--side", type=int, default=512)
    parser.add_argument("--modes", nargs="+", default=["slabs", "whole"], choices=["slabs", "whole"])
    parser.add_argument("--whole-slices", type=int, nargs="+", default=None,
                        help="run the whole-volume mode only at these N (default: every N of --slices); it needs as long as the slabs")
    parser.add_argument("--reuse", nargs="+", default=[], choices=["slabs", "whole"],
                        help="take these modes' rows from an earlier run's row files where they exist (same machine), instead of measuring again")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of the results file already there (same side) that this run does not measure again")
    parser.add_argument("--malloc-mmap-threshold", type=int, default=None, metavar="BYTES",
                        help="run the measuring processes with glibc's MALLOC_MMAP_THRESHOLD_=BYTES (a fixed threshold: freed "
                             "slab buffers go back to the system instead of staying in the heap)")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--note", default="", help="how busy the CPU was, for the table")
    parser.add_argument("--worker", nargs=3, metavar=("VOLUME", "MODE", "OUT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(Path(args.worker[0]), args.worker[1], Path(args.worker[2]))
        return
    from data_modules.synthetic import write_large_ct

    RUNS.mkdir(parents=True, exist_ok=True)
    rows: List[Dict[str, Any]] = []
    for n in args.slices:
        volume = RUNS / f"ct_{args.side}x{args.side}x{n}.nii"
        if not volume.is_file():
            print(f"writing {volume} ...", flush=True)
            write_large_ct(volume, (args.side, args.side, n))
        for mode in args.modes:
            if mode == "whole" and args.whole_slices is not None and n not in args.whole_slices:
                continue
            suffix = "" if args.malloc_mmap_threshold is None else f"_mmap{args.malloc_mmap_threshold}"
            out = RUNS / f"row_{args.side}_{n}_{mode}{suffix}.json"
            if mode in args.reuse and out.is_file():
                print(f"=== {n} slices, {mode}: reusing {out}", flush=True)
                rows.append(dict(json.loads(out.read_text()), volume_mib=volume.stat().st_size / 2**20, reused=True))
                continue
            print(f"=== {n} slices, {mode}", flush=True)
            subprocess.run([sys.executable, __file__, "--worker", str(volume), mode, str(out)], check=True, cwd=REPO,
                           env=dict(os.environ, PYTHONPATH=str(REPO),
                                    **({} if args.malloc_mmap_threshold is None else {"MALLOC_MMAP_THRESHOLD_": str(args.malloc_mmap_threshold)})))
            row = json.loads(out.read_text())
            row["volume_mib"] = volume.stat().st_size / 2**20
            rows.append(row)
    if args.append and (args.results / f"{NAME}.json").is_file():
        earlier = json.loads((args.results / f"{NAME}.json").read_text())
        key = lambda r: (r["slices"], r["mode"], r.get("malloc_mmap_threshold"))  # noqa: E731
        measured = {key(r) for r in rows}
        if earlier.get("side") == args.side:
            rows = [dict(r, reused=True) for r in earlier["rows"] if key(r) not in measured] + rows
    result = {"side": args.side, "cpu": cpu_model(), "threads": rows[0]["threads"] if rows else None, "note": args.note or "see the commit",
              "rows": rows}
    write_results(args.results, NAME, result, markdown, plot)


if __name__ == "__main__":
    main()
