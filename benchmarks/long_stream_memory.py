"""Long runs: a 10-experience shrunken stream with replay keeps peak memory within the buffer budget
plus a constant.  A script reports it; it is not a timed test.

The stream is built from the shipped demo data (``data/demo/medmnist``): BloodMNIST and OrganAMNIST
alternate, each experience a distinct task (its own ``task_name`` and head) on its own seeded subset
of training images (``subset_seed`` = the experience index).  ``ContinualModule`` (tiny ViT from
scratch, 1 epoch per experience, CPU) trains it with a ``ReplayCallback`` whose budget is ``max_mb``
(class-balanced policy), ``ContinualEvaluation`` tests every task after every experience,
``ModelCheckpoint`` keeps ``last.ckpt`` and a CSV logger logs: the setup of a real run, shrunk.

Each budget runs in a fresh Python process (``medcl fit`` in-process through
``framework.cli.run_cli``, from a generated YAML config), so its peak is its own.  A probe callback
measures at every experience end (after replay and evaluation) and once when ``fit`` ends:

* process RSS and peak RSS (``VmRSS`` / ``VmHWM`` of ``/proc/self/status``);
* the replay buffer's stored bytes (``nbytes()``) and allocation (``allocated_bytes()``);
* after ``gc.collect()``: Python objects tracked by the garbage collector, live torch tensors and
  the bytes of their (distinct) storages, the optimizer's parameter groups and state bytes;
* glibc's heap (``mallinfo2``, read-only, all arenas): bytes in use and free bytes kept for reuse
  (torch's CPU tensors are allocated there), which separates live memory from allocator retention.

``tracemalloc`` does not see torch's allocations, so it is not used.  Experiences are numbered 1..N
here.  The line fitted through RSS over experiences 3..N gives the growth per experience once the
buffer is full; "RSS - buffer allocated" from experience 2 to N is the growth not explained by the
buffer.  Results: ``benchmarks/results/long_stream_memory.{json,md}`` (one entry per budget, merged
with earlier runs); the runs themselves land in ``runs/benchmarks/long_stream_memory/``.

    python benchmarks/long_stream_memory.py                          # budgets 2 and 8 MB, 10 experiences (~1.5 min on 2 idle cores)
    python benchmarks/long_stream_memory.py --budgets 0              # the same stream without replay (control)
    python benchmarks/long_stream_memory.py --budgets 2 32 --train-subset 1000   # a budget that fills later
    python benchmarks/long_stream_memory.py --collect-only           # rewrite the results from the latest runs
    python benchmarks/long_stream_memory.py --experiences 3 --train-subset 64 --results /tmp/lsm   # smoke run
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl

from framework.strategies import ExperienceCallback
import torch
import yaml

from runs import REPO, RESULTS, fmt, latest_metrics, load_results, record

NAME = "long_stream_memory"
RUNS = REPO / "runs" / "benchmarks" / NAME
FLAGS = ("bloodmnist", "organamnist")
MiB = 2**20


# ---------------------------------------------------------------------- measuring (worker process)
def proc_status() -> Dict[str, float]:
    """``VmRSS``, ``VmHWM``, ``RssAnon`` and ``RssFile`` (mapped files: shared libraries) of this process in MiB."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024  # kB
    return out


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]


def malloc_info() -> Optional[Dict[str, float]]:
    """glibc's heap, all arenas (``mallinfo2``, read-only): bytes in use (``uordblks`` + mmapped
    ``hblkhd``) and free bytes kept for reuse (``fordblks``), in MiB; None without glibc >= 2.33."""
    try:
        fn = ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        return None
    fn.restype = _MallInfo2
    info = fn()
    return {"in_use": (info.uordblks + info.hblkhd) / MiB, "free": info.fordblks / MiB}


def census() -> Dict[str, Any]:
    """After ``gc.collect()``: gc-tracked objects by type, live tensors and their distinct storage bytes."""
    gc.collect()
    objects = gc.get_objects()
    types = collections.Counter(type(o).__qualname__ for o in objects)
    storages: Dict[tuple, int] = {}
    tensors = 0
    for o in objects:
        try:
            if not isinstance(o, torch.Tensor) or o.is_meta:
                continue
            tensors += 1
            s = o.untyped_storage()
            storages[(o.device.type, s.data_ptr())] = s.nbytes()
        except Exception:  # lazy proxies, freed or odd tensor subclasses
            continue
    del objects
    return {"types": types, "objects": sum(types.values()), "tensors": tensors, "tensor_mib": sum(storages.values()) / MiB}


def optimizer_stats(trainer: pl.Trainer) -> Dict[str, Any]:
    if not trainer.optimizers:
        return {"groups": 0, "state_mib": 0.0}
    opt = trainer.optimizers[0]
    nbytes = sum(v.nbytes for state in opt.state.values() for v in state.values() if isinstance(v, torch.Tensor))
    return {"groups": len(opt.param_groups), "state_mib": nbytes / MiB}


class MemoryProbe(ExperienceCallback):
    """Measures memory at every experience end (the paradigm calls ``after_experience``) and at the
    end of ``fit``; writes the rows to ``out`` (JSON) after each measurement and prints a line."""

    def __init__(self, out: str, label: str = "") -> None:
        super().__init__()
        self.out, self.label = Path(out), label
        self.rows: List[Dict[str, Any]] = []
        self.types: Dict[int, collections.Counter] = {}
        self.start = time.perf_counter()

    def _buffer(self, trainer: pl.Trainer):
        from framework.callbacks import ReplayCallback

        return next((c.buffer for c in trainer.callbacks if isinstance(c, ReplayCallback)), None)

    def measure(self, trainer: pl.Trainer, pl_module, experience: Optional[int], tasks: List[str]) -> Dict[str, Any]:
        status = proc_status()  # first, before the census allocates anything
        buffer = self._buffer(trainer)
        counted = census()
        heap = malloc_info() or {}
        row = {
            "experience": experience, "tasks": tasks, "elapsed_s": time.perf_counter() - self.start,
            "rss_mib": status["VmRSS"], "peak_rss_mib": status["VmHWM"], "rss_anon_mib": status.get("RssAnon"), "rss_file_mib": status.get("RssFile"), "malloc_in_use_mib": heap.get("in_use"), "malloc_free_mib": heap.get("free"),
            "buffer_samples": len(buffer) if buffer is not None else 0,
            "buffer_capacity": buffer.capacity if buffer is not None else 0,
            "buffer_mib": buffer.nbytes() / MiB if buffer is not None else 0.0,
            "buffer_allocated_mib": buffer.allocated_bytes() / MiB if buffer is not None else 0.0,
            "gc_objects": counted["objects"], "tensors": counted["tensors"], "tensor_mib": counted["tensor_mib"],
            "model_params": sum(p.numel() for p in pl_module.parameters()),
            "heads": len(pl_module.task_specs), "metric_collections": len(pl_module.metrics),
            **{f"optimizer_{k}": v for k, v in optimizer_stats(trainer).items()},
        }
        self.types[len(self.rows)] = counted["types"]
        self.rows.append(row)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.write_text(json.dumps({"rows": self.rows, "type_growth": self.type_growth()}, indent=2))
        where = f"experience {experience + 1:>2} ({'+'.join(tasks)})" if experience is not None else "end of fit"
        print(
            f"[{self.label}] {where}: RSS {row['rss_mib']:.1f} MiB (peak {row['peak_rss_mib']:.1f}, anonymous {fmt(row['rss_anon_mib'], 1)}; malloc in use {fmt(heap.get('in_use'), 1)}, free {fmt(heap.get('free'), 1)}), "
            f"buffer {row['buffer_samples']}/{row['buffer_capacity']} samples {row['buffer_mib']:.2f} MiB stored "
            f"{row['buffer_allocated_mib']:.2f} allocated, live tensors {row['tensors']} = {row['tensor_mib']:.1f} MiB, "
            f"gc objects {row['gc_objects']:,}, {row['elapsed_s']:.0f} s",
            flush=True,
        )
        return row

    def type_growth(self, top: int = 15) -> Dict[str, int]:
        """gc-tracked objects per type: change from the second experience to the latest row (largest first)."""
        if len(self.types) < 3:
            return {}
        first, last = self.types[1], self.types[max(self.types)]
        diff = {t: last[t] - first[t] for t in set(first) | set(last) if last[t] != first[t]}
        return dict(sorted(diff.items(), key=lambda kv: -abs(kv[1]))[:top])

    def after_experience(self, trainer: pl.Trainer, pl_module, experience: int, tasks: List[str]) -> None:
        self.measure(trainer, pl_module, experience, tasks)

    def on_train_end(self, trainer: pl.Trainer, pl_module) -> None:
        self.measure(trainer, pl_module, None, [])


def stream_config(budget: float, experiences: int, train_subset: int, eval_subset: int, policy: str, root: Path, probe_out: Path) -> Dict[str, Any]:
    """The config of one run: ``experiences`` distinct demo tasks, replay with ``max_mb: budget`` (none when 0)."""
    domains = []
    for i in range(experiences):
        flag = FLAGS[i % len(FLAGS)]
        domains.append({"class_path": "data_modules.MedMNISTDataModule", "init_args": {
            "flag": flag, "data_dir": str(REPO / "data" / "demo" / "medmnist"), "task_name": f"{flag}_s{i}",
            "train_subset": train_subset, "val_subset": eval_subset, "test_subset": eval_subset, "subset_seed": i,
            "batch_size": 64, "eval_batch_size": 64,
        }})
    callbacks = []
    if budget > 0:
        callbacks.append({"class_path": "framework.callbacks.ReplayCallback",
                          "init_args": {"capacity": None, "max_mb": budget, "policy": policy, "replay_batch_size": 32}})
    callbacks += [
        {"class_path": "framework.callbacks.ContinualEvaluation", "init_args": {"split": "test"}},
        {"class_path": "pytorch_lightning.callbacks.ModelCheckpoint",
         "init_args": {"save_last": True, "save_on_train_epoch_end": True, "filename": "{epoch}"}},
        {"class_path": f"{NAME}.MemoryProbe", "init_args": {"out": str(probe_out), "label": label_of(budget)}},  # last: measures after replay and evaluation
    ]
    return {
        "seed_everything": 0,
        "model": {"class_path": "framework.paradigms.ContinualModule", "init_args": {
            "backbone": "medcl-vit-tiny", "pretrained": None, "freeze_text_tower": True,
            "head_args": {"classification": {"learn_class_embeddings": True}}, "lr": 0.001, "epochs_per_experience": 1,
        }},
        "data": {"class_path": "data_modules.DomainStream", "init_args": {"domains": domains}},
        "trainer": {
            "max_epochs": experiences, "reload_dataloaders_every_n_epochs": 1, "accelerator": "cpu", "devices": 1,
            "default_root_dir": str(root), "log_every_n_steps": 10, "enable_progress_bar": False,
            "enable_model_summary": False, "num_sanity_val_steps": 0,
            "logger": [{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(root), "name": "run"}}],
            "callbacks": callbacks,
        },
    }


def label_of(budget: float) -> str:
    return f"max_mb={budget:g}" if budget > 0 else "no replay"


def worker(args: argparse.Namespace) -> None:
    """One run in this process (called by :func:`main` in a fresh interpreter)."""
    from framework.cli import run_cli

    root = RUNS / f"mb{args.worker:g}"
    config = stream_config(args.worker, args.experiences, args.train_subset, args.eval_subset, args.policy, root, Path(args.probe_out))
    path = root / "config.generated.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    run_cli(["fit", "--config", str(path)])


# ---------------------------------------------------------------------- analysis (parent process)
def summarize(rows: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Slopes over experiences 3..N, growth not explained by the buffer, and the peak decomposition."""
    exp = [r for r in rows if r["experience"] is not None]
    end = next((r for r in rows if r["experience"] is None), exp[-1])
    n = len(exp)
    x = np.arange(1, n + 1, dtype=float)

    def slope(key: str, transform=lambda r, v: v) -> Optional[float]:
        if n < 4:
            return None
        y = np.array([transform(r, r[key]) for r in exp], dtype=float)
        return float(np.polyfit(x[2:], y[2:], 1)[0])

    unexplained = lambda r, v: v - r["buffer_allocated_mib"]  # noqa: E731
    first, second, last = exp[0], exp[min(1, n - 1)], exp[-1]
    baseline = first["rss_mib"] - first["buffer_allocated_mib"]
    peak = max(end["peak_rss_mib"], last["peak_rss_mib"])
    return {
        "experiences": n,
        "rss_slope_mib_per_exp": slope("rss_mib"),
        "rss_minus_buffer_slope_mib_per_exp": slope("rss_mib", unexplained),
        "malloc_in_use_slope_mib_per_exp": slope("malloc_in_use_mib") if all(r["malloc_in_use_mib"] is not None for r in exp) else None,
        "tensor_slope_mib_per_exp": slope("tensor_mib"),
        "gc_objects_slope_per_exp": slope("gc_objects"),
        "rss_minus_buffer_growth_2_to_n_mib": unexplained(last, last["rss_mib"]) - unexplained(second, second["rss_mib"]),
        "malloc_in_use_minus_buffer_growth_2_to_n_mib": (
            unexplained(last, last["malloc_in_use_mib"]) - unexplained(second, second["malloc_in_use_mib"])
            if last["malloc_in_use_mib"] is not None and second["malloc_in_use_mib"] is not None else None
        ),
        "tensor_minus_buffer_growth_2_to_n_mib": unexplained(last, last["tensor_mib"]) - unexplained(second, second["tensor_mib"]),
        "gc_objects_growth_2_to_n": last["gc_objects"] - second["gc_objects"],
        "optimizer_state_growth_2_to_n_mib": last["optimizer_state_mib"] - second["optimizer_state_mib"],
        "baseline_mib": baseline,  # RSS after experience 1 minus the buffer allocated then
        "peak_rss_mib": peak,  # VmHWM at the end of fit (after the last checkpoint)
        "buffer_allocated_final_mib": last["buffer_allocated_mib"],
        "buffer_stored_final_mib": last["buffer_mib"],
        "peak_remainder_mib": peak - baseline - last["buffer_allocated_mib"],
    }


def markdown(results: Dict[str, Any]) -> str:
    lines = [
        "# Long runs: memory over a 10-experience stream with replay", "",
        "ContinualModule (medcl-vit-tiny from scratch, 1 epoch per experience, CPU) on distinct demo tasks, BloodMNIST and",
        "OrganAMNIST alternating (each its own task name, head and seeded subset), class-balanced ReplayCallback with a max_mb",
        "budget, ContinualEvaluation after every experience, ModelCheckpoint (last), CSV logger; one fresh process per budget.",
        "Measured at each experience end: RSS and peak RSS (VmRSS/VmHWM), the buffer's stored bytes (nbytes) and allocation",
        "(allocated_bytes), anonymous RSS (RssAnon: RSS without mapped files such as torch's libraries), glibc heap in use and free-but-kept (mallinfo2, all arenas; torch's CPU tensors live there), live torch",
        "tensor storages and gc-tracked objects (after gc.collect).  Experiences 1..N; \"end\" = when fit ends, after the last checkpoint.",
        "`python benchmarks/long_stream_memory.py` writes this file.", "",
        "| budget | exp | RSS (MiB) | peak RSS (MiB) | buffer stored (MiB) | buffer allocated (MiB) | RSS - buffer alloc. (MiB) | anonymous RSS (MiB) | malloc in use (MiB) | malloc free (MiB) | live tensors (MiB) | gc objects |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, entry in results.items():
        for r in entry["memory"]["rows"]:
            exp = str(r["experience"] + 1) if r["experience"] is not None else "end"
            lines.append(
                f"| {label} | {exp} | {r['rss_mib']:.1f} | {r['peak_rss_mib']:.1f} | {r['buffer_mib']:.2f} | {r['buffer_allocated_mib']:.2f} "
                f"| {r['rss_mib'] - r['buffer_allocated_mib']:.1f} | {fmt(r['rss_anon_mib'], 1)} | {fmt(r['malloc_in_use_mib'], 1)} | {fmt(r['malloc_free_mib'], 1)} | {r['tensor_mib']:.1f} | {r['gc_objects']:,} |"
            )
    lines += ["", "| budget | RSS slope, exp 3..N (MiB/exp) | RSS - buffer slope | malloc in use slope | live tensors slope | "
              "RSS - buffer growth 2..N (MiB) | malloc in use - buffer growth 2..N | gc objects growth 2..N | peak RSS (MiB) | wall |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for label, entry in results.items():
        s = entry["memory"]["summary"]
        lines.append(
            f"| {label} | {fmt(s['rss_slope_mib_per_exp'], 2)} | {fmt(s['rss_minus_buffer_slope_mib_per_exp'], 2)} | "
            f"{fmt(s['malloc_in_use_slope_mib_per_exp'], 2)} | {fmt(s['tensor_slope_mib_per_exp'], 2)} | {s['rss_minus_buffer_growth_2_to_n_mib']:+.1f} | "
            f"{fmt(s['malloc_in_use_minus_buffer_growth_2_to_n_mib'], 1)} | {s['gc_objects_growth_2_to_n']:+,} | {s['peak_rss_mib']:.1f} | {fmt(entry.get('wall_time_s'), 0)}{' s' if entry.get('wall_time_s') is not None else ''} |"
        )
    lines += ["", conclusion(results)]
    return "\n".join(lines) + "\n"


def conclusion(results: Dict[str, Any]) -> str:
    parts = []
    for label, entry in results.items():
        s = entry["memory"]["summary"]
        parts.append(
            f"{label}: peak RSS after experience {s['experiences']} = {s['peak_rss_mib']:.1f} MiB = baseline after experience 1 "
            f"(RSS minus buffer) {s['baseline_mib']:.1f} MiB + buffer allocated {s['buffer_allocated_final_mib']:.2f} MiB "
            f"+ {s['peak_remainder_mib']:.1f} MiB; RSS grows {fmt(s['rss_slope_mib_per_exp'], 2)} MiB/experience over experiences 3..{s['experiences']} "
            f"(glibc heap in use {fmt(s['malloc_in_use_slope_mib_per_exp'], 2)}, live tensors {fmt(s['tensor_slope_mib_per_exp'], 2)}), and RSS minus "
            f"the buffer allocation changes by {s['rss_minus_buffer_growth_2_to_n_mib']:+.1f} MiB from experience 2 to {s['experiences']}"
            + (f" (the buffer stores {s['buffer_stored_final_mib']:.2f} MiB but has {s['buffer_allocated_final_mib']:.2f} MiB allocated, "
               f"{s['buffer_allocated_final_mib'] / budget:.2f}x its max_mb={budget:g} budget: each task's storage keeps room to grow)" if (budget := entry["memory"]["settings"]["budget_mb"]) > 0 else "")
        )
    remainders = [e["memory"]["summary"]["peak_remainder_mib"] for e in results.values()]
    unexplained = [e["memory"]["summary"]["rss_minus_buffer_growth_2_to_n_mib"] for e in results.values()]
    heap = [e["memory"]["summary"]["malloc_in_use_minus_buffer_growth_2_to_n_mib"] for e in results.values()]
    spread = max(remainders) - min(remainders) if len(remainders) > 1 else 0.0
    heap = [h for h in heap if h is not None]
    return (
        "**Conclusion.** " + "; ".join(parts) + ". "
        f"Across budgets the constant beyond baseline + buffer varies by {spread:.1f} MiB; growth not explained by the buffer "
        f"is at most {max(unexplained):+.1f} MiB over experiences 2..N"
        + (f" (heap in use: {max(heap):+.1f} MiB)." if heap else ".")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budgets", type=float, nargs="+", default=[2.0, 8.0],
                        help="replay budgets in MB (max_mb); 0 = the same stream without replay, a control (default: 2 8)")
    parser.add_argument("--experiences", type=int, default=10, help="experiences (distinct tasks) in the stream (default: 10)")
    parser.add_argument("--train-subset", type=int, default=200, help="training images per task (default: 200)")
    parser.add_argument("--eval-subset", type=int, default=100, help="validation and test images per task (default: 100)")
    parser.add_argument("--policy", default="class_balanced", choices=["reservoir", "class_balanced"], help="replay storage policy")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of long_stream_memory.{json,md} (default: benchmarks/results)")
    parser.add_argument("--collect-only", action="store_true", help="do not train; read the latest runs' probe files and metrics")
    parser.add_argument("--worker", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--probe-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.experiences < 2:
        parser.error("--experiences expected at least 2")
    if args.worker is not None:
        worker(args)
        return
    path = args.results / f"{NAME}.json"
    results = load_results(NAME) if args.results == RESULTS else (json.loads(path.read_text()) if path.is_file() else {})
    for budget in args.budgets:
        label = label_of(budget)
        probe_out = RUNS / f"mb{budget:g}" / "memory_probe.json"
        wall = None
        if not args.collect_only:
            probe_out.unlink(missing_ok=True)
            cmd = [sys.executable, __file__, "--worker", str(budget), "--probe-out", str(probe_out), "--experiences", str(args.experiences),
                   "--train-subset", str(args.train_subset), "--eval-subset", str(args.eval_subset), "--policy", args.policy]
            print(f"\n=== {label}: {args.experiences} experiences x {args.train_subset} training images", flush=True)
            start = time.perf_counter()
            subprocess.run(cmd, cwd=REPO, check=True)
            wall = time.perf_counter() - start
        probe = json.loads(probe_out.read_text())
        entry = record(results, label, latest_metrics(RUNS / f"mb{budget:g}"), wall)
        entry["memory"] = {
            "rows": probe["rows"], "type_growth_exp2_to_end": probe["type_growth"], "summary": summarize(probe["rows"]),
            "settings": {"budget_mb": budget, "experiences": args.experiences, "train_subset": args.train_subset,
                         "eval_subset": args.eval_subset, "policy": args.policy, "torch_threads": torch.get_num_threads()},
        }
    args.results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    (args.results / f"{NAME}.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
