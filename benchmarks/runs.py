"""Shared by the benchmark scripts: run a config with ``medcl fit`` and find its latest result."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def cpu_model() -> str:
    """The CPU's model name (``lscpu``), for results tables: seeded numbers and timings depend on it."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        return platform.processor() or "unknown"


def latest_metrics(root: Path) -> Path:
    """The newest ``continual_metrics.json`` under ``root`` (a config's ``runs/...`` folder).

    Raises:
        FileNotFoundError: naming the folder, if no run finished there.
    """
    runs = sorted(Path(root).glob("**/continual_metrics.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        raise FileNotFoundError(f"no finished run under {root}")
    return runs[-1]


def run_config(config: str, extra: Sequence[str] = (), label: str = "") -> float:
    """``medcl fit --config CONFIG EXTRA...`` from the repo root; returns the wall time in seconds."""
    cmd: List[str] = [sys.executable, "-m", "framework.cli", "fit", "--config", config, *extra]
    print(f"\n=== {label or config}: {' '.join(cmd[2:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    return time.perf_counter() - start


def load_results(name: str) -> Dict[str, Any]:
    """``benchmarks/results/<name>.json`` as written by an earlier run, or ``{}``."""
    path = RESULTS / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def record(results: Dict[str, Any], name: str, metrics: Path, wall: Optional[float], previous: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Read a run's ``continual_metrics.json`` into ``results[name]`` (without the per-cell
    ``details``), with its wall time (``previous[name]``'s when ``wall`` is None: ``--collect-only``)
    and its run folder."""
    result = json.loads(Path(metrics).read_text())
    result.pop("details", None)
    result["wall_time_s"] = wall if wall is not None else (previous if previous is not None else results).get(name, {}).get("wall_time_s")
    folder = Path(metrics).resolve().parent
    result["run"] = str(folder.relative_to(REPO)) if folder.is_relative_to(REPO) else str(folder)  # a run outside the checkout: absolute
    results[name] = result
    return result


def write_results(folder: Path, name: str, result: Dict[str, Any], markdown: Callable[[Dict[str, Any]], str], plot: Callable[[Dict[str, Any], Path], None]) -> None:
    """``folder/<name>.{json,md,png}`` from a benchmark's result; prints the markdown."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(result, indent=2))
    text = markdown(result)
    (folder / f"{name}.md").write_text(text)
    plot(result, folder / f"{name}.png")
    print(text)


def save_figure(fig, path: Path) -> None:
    """Lay out, write (120 dpi) and close a matplotlib figure."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def fmt(value, digits: int = 3) -> str:
    """A number for a results table (``n/a`` for None)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def fmt_mean_std(value: Dict[str, Any], digits: int = 3) -> str:
    """``mean ± std`` of a ``{"mean", "std", "n"}`` entry (only the mean for one value; ``n/a`` for none)."""
    if value["mean"] is None:
        return "n/a"
    return f"{fmt(value['mean'], digits)} ± {fmt(value['std'], digits)}" if value["n"] > 1 else fmt(value["mean"], digits)


def finish_study(runs: Dict[str, Any], out: Path, write: Callable[[], Any], markdown: Path) -> None:
    """End a resumable study script: refuse an empty ``--collect-only``, write the results once more, print the table."""
    if not runs:
        raise SystemExit(f"{out}: no stored runs to collect; run without --collect-only first")
    write()
    print(markdown.read_text())
