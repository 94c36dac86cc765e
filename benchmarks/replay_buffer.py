"""Benchmark: replay-buffer memory and per-step cost against capacity.

For each capacity (exemplars of 28 px RGB images as BloodMNIST batches reach the callback: uint8
tensors, with long class targets) the buffer is filled to capacity from one task, then one
training step's buffer work for a second task is timed: offering a 64-image batch and drawing 32
exemplars (``add_batch`` + ``sample``), averaged over ``--steps`` steps.  Memory is the bytes of
the stored image and target tensors (``ReplayBuffer.nbytes``); the allocated bytes (room to grow
included) are reported beside it.

Results are written per implementation (``--label``, default the current git revision), so the
numbers before and after a change of the buffer sit side by side in
``benchmarks/results/replay_buffer.{json,md}`` (``--results`` writes elsewhere, e.g. for a smoke
run).  Timings depend on the CPU and the thread count.

    python benchmarks/replay_buffer.py                      # capacities 500, 5,000, 50,000
    python benchmarks/replay_buffer.py --label after-rewrite
    python benchmarks/replay_buffer.py --capacities 100 --steps 5 --results /tmp/replay-smoke   # smoke run
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO))


def measure(capacity: int, policy: str, steps: int) -> dict:
    from framework.replay import ReplayBuffer

    torch.manual_seed(0)
    buffer = ReplayBuffer(capacity, policy, seed=0)
    start = time.perf_counter()
    while len(buffer) < capacity:
        images = torch.randint(0, 256, (256, 3, 28, 28), dtype=torch.uint8)
        buffer.add_batch("bloodmnist", images, torch.randint(0, 8, (256,)))
    fill = time.perf_counter() - start
    images, targets = torch.randint(0, 256, (64, 3, 28, 28), dtype=torch.uint8), torch.randint(0, 11, (64,))
    start = time.perf_counter()
    for _ in range(steps):
        buffer.add_batch("organamnist", images, targets)
        buffer.sample(32)
    step_ms = (time.perf_counter() - start) / steps * 1000
    return {
        "capacity": capacity, "policy": policy, "dtype": "uint8", "mib": buffer.nbytes() / 2**20,
        "allocated_mib": buffer.allocated_bytes() / 2**20, "step_ms": step_ms, "fill_s": fill,
    }


def markdown(results: dict) -> str:
    lines = [
        "Replay buffer: 28 px RGB exemplars; per step = offer a 64-image batch + draw 32 exemplars "
        f"(torch threads: {results['threads']}).  Memory = stored samples; allocated = with room to grow.",
        "",
        "| implementation | policy | image dtype | capacity | memory (MiB) | allocated (MiB) | per step (ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, rows in results["runs"].items():
        for row in rows:
            allocated = f"{row['allocated_mib']:.1f}" if "allocated_mib" in row else "–"
            lines.append(
                f"| {label} | {row['policy']} | {row.get('dtype', 'float32')} | {row['capacity']:,} | {row['mib']:.1f} | {allocated} | {row['step_ms']:.2f} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacities", type=int, nargs="+", default=[500, 5000, 50000])
    parser.add_argument("--policies", nargs="+", default=["reservoir", "class_balanced"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--label", default=None, help="name of this implementation (default: git revision)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="folder of replay_buffer.{json,md} (default: benchmarks/results)")
    args = parser.parse_args()
    label = args.label or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    path = args.results / "replay_buffer.json"
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    results["threads"] = torch.get_num_threads()
    rows = []
    for policy in args.policies:
        for capacity in args.capacities:
            rows.append(measure(capacity, policy, args.steps))
            row = rows[-1]
            print(f"{label} {policy} {capacity:>6}: {row['mib']:.1f} MiB ({row['allocated_mib']:.1f} allocated), {row['step_ms']:.2f} ms/step", flush=True)
    results["runs"][label] = rows
    args.results.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    (args.results / "replay_buffer.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
