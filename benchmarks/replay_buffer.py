"""Benchmark: replay-buffer memory and per-step cost against capacity.

For each capacity (exemplars of 28 px RGB images, as BloodMNIST batches reach the callback: float
tensors in [0, 1]) the buffer is filled to capacity, then one training step's buffer work is
timed: offering a 64-image batch and drawing 32 exemplars (``add_batch`` + ``sample``), averaged
over ``--steps`` steps.  Memory is the bytes of the stored image and target tensors.

Results are written per implementation (``--label``, default the current git revision), so the
numbers before and after a change of the buffer sit side by side in
``benchmarks/results/replay_buffer.{json,md}``.  Timings depend on the CPU and the thread count.

    python benchmarks/replay_buffer.py                      # capacities 500, 5,000, 50,000
    python benchmarks/replay_buffer.py --label after-rewrite
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


def stored_bytes(buffer) -> int:
    """Bytes of every stored tensor (image and target), whatever the storage layout."""
    state = buffer.state_dict()
    total, seen = 0, set()

    def walk(node):
        nonlocal total
        if isinstance(node, torch.Tensor):
            key = (node.untyped_storage().data_ptr(), node.storage_offset(), node.numel())
            if key not in seen:
                seen.add(key)
                total += node.numel() * node.element_size()
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, (list, tuple)):
            for value in node:
                walk(value)

    walk(state)
    return total


def measure(capacity: int, policy: str, steps: int) -> dict:
    from framework.callbacks.replay import POLICIES, ReplayBuffer

    torch.manual_seed(0)
    buffer = ReplayBuffer(capacity, POLICIES[policy](), seed=0)
    start = time.perf_counter()
    while len(buffer) < capacity:
        buffer.add_batch("bloodmnist", torch.rand(256, 3, 28, 28), torch.randint(0, 8, (256,)))
    fill = time.perf_counter() - start
    images, targets = torch.rand(64, 3, 28, 28), torch.randint(0, 8, (64,))
    start = time.perf_counter()
    for _ in range(steps):
        buffer.add_batch("organamnist", images, targets)
        buffer.sample(32)
    step_ms = (time.perf_counter() - start) / steps * 1000
    return {"capacity": capacity, "policy": policy, "mib": stored_bytes(buffer) / 2**20, "step_ms": step_ms, "fill_s": fill}


def markdown(results: dict) -> str:
    lines = [
        "Replay buffer: 28 px RGB exemplars; per step = offer a 64-image batch + draw 32 exemplars "
        f"(torch threads: {results['threads']}).",
        "",
        "| implementation | policy | capacity | memory (MiB) | per step (ms) |",
        "|---|---|---|---|---|",
    ]
    for label, rows in results["runs"].items():
        for row in rows:
            lines.append(f"| {label} | {row['policy']} | {row['capacity']:,} | {row['mib']:.1f} | {row['step_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--capacities", type=int, nargs="+", default=[500, 5000, 50000])
    parser.add_argument("--policies", nargs="+", default=["reservoir", "class_balanced"])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--label", default=None, help="name of this implementation (default: git revision)")
    args = parser.parse_args()
    label = args.label or subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    path = RESULTS / "replay_buffer.json"
    results = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    results["threads"] = torch.get_num_threads()
    rows = []
    for policy in args.policies:
        for capacity in args.capacities:
            rows.append(measure(capacity, policy, args.steps))
            print(f"{label} {policy} {capacity:>6}: {rows[-1]['mib']:.1f} MiB, {rows[-1]['step_ms']:.2f} ms/step", flush=True)
    results["runs"][label] = rows
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2))
    (RESULTS / "replay_buffer.md").write_text(markdown(results))
    print(markdown(results))


if __name__ == "__main__":
    main()
