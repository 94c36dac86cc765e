"""Refactoring guard: the same seed gives the same results as the stored reference.

``tests/data/behaviour_reference.json`` holds, for shrunk copies of real experiment configs (the
quickstart, and the replay, herding, EWC and LwF strategies), the continual-evaluation matrices
and the logged training and validation values of a seeded run, written by
``python tests/test_behaviour_preserved.py --write`` at the commit named in the file.  A refactoring
that changes what the model computes (a strategy hook called in another order, a random draw more
or less) changes these numbers.

Accuracies (discrete) are compared to 1e-6 on every CPU.  Losses are compared to 1e-6 on the CPU
that wrote the reference and to 1e-3 (relative) on another one: seeded float results move with the
CPU's kernels (AVX512 vs AMX paths), while the predictions behind an accuracy rarely do.
"""
from __future__ import annotations

import csv
import json
import math
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from conftest import REPO  # noqa: E402
from helpers import shrink_config  # noqa: E402

from framework.pretraining.export import cpu_name  # noqa: E402

REFERENCE = HERE / "data" / "behaviour_reference.json"
#: name -> (experiment config, shrink options); shrunk but long enough that the models are not at chance
CASES = {
    "quickstart": ("experiments/quickstart.yaml", dict(train_subset=256, eval_subset=200, batch_size=32, train_batches=8)),
    "replay_herding": ("experiments/strategies/replay_herding.yaml", dict(train_subset=96, eval_subset=100, batch_size=32, train_batches=3)),
    "replay_lwf": ("experiments/strategies/replay_lwf.yaml", dict(train_subset=96, eval_subset=100, batch_size=32, train_batches=3)),
    "ewc": ("experiments/strategies/ewc.yaml", dict(train_subset=96, eval_subset=100, batch_size=32, train_batches=3)),
    # the whole quickstart (about a minute): the README's numbers
    "quickstart_full": ("experiments/quickstart.yaml", None),
}
HEAVY = {"quickstart_full"}


def unshrunk_config(path: str, out_dir: Path) -> Path:
    """The config as it is, writing under ``out_dir`` with a CSV logger only."""
    import yaml

    from helpers import load_config

    config = load_config(REPO / path)
    config["trainer"].update(default_root_dir=str(out_dir), enable_progress_bar=False)
    config["trainer"]["logger"] = [{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(out_dir), "name": "run"}}]
    out = Path(out_dir) / "config.yaml"
    out.write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def run_case(name: str, out_dir: Path) -> dict:
    """Run one shrunk config in-process; its matrices and logged training and validation values."""
    import torch

    from framework.cli import run_cli

    path, options = CASES[name]
    config = shrink_config(path, out_dir, **options) if options is not None else unshrunk_config(path, out_dir)
    torch.set_num_threads(2)  # the reference's thread count: sums are reduced in thread-count-dependent order
    cli = run_cli(["fit", "--config", str(config)])
    (metrics_json,) = list(Path(out_dir).rglob("continual_metrics.json"))
    result = json.loads(metrics_json.read_text())
    (metrics_csv,) = list(Path(out_dir).rglob("metrics.csv"))
    losses = {}
    with open(metrics_csv) as fh:
        for row in csv.DictReader(fh):
            for key, value in row.items():
                if key.startswith(("train/", "val/")) and value:
                    losses[f"step {row['step']}:{key}"] = float(value)
    del cli
    return {"matrices": result.get("metric_matrices") or {"acc": result["accuracy_matrix"]}, "accuracy_matrix": result["accuracy_matrix"], "losses": losses}


def _close(a, b, tol: float) -> bool:
    if a is None or b is None:
        return a is b
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(b))


def _flatten(x, prefix=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _flatten(v, f"{prefix}{k}/")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _flatten(v, f"{prefix}{i}/")
    else:
        yield prefix.rstrip("/"), x


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.heavy) if n in HEAVY else n for n in CASES])
def test_same_seed_same_results_as_the_reference(name, tmp_path):
    reference = json.loads(REFERENCE.read_text())
    expected = reference["cases"][name]
    got = run_case(name, tmp_path)
    same_cpu = reference["cpu"] == cpu_name()
    loss_tol = 1e-6 if same_cpu else 1e-3
    for key in ("accuracy_matrix", "matrices"):
        want, have = dict(_flatten(expected[key])), dict(_flatten(got[key]))
        assert set(have) == set(want), f"{name}: {key} entries differ: {sorted(set(have) ^ set(want))[:10]}"
        bad = {k: (have[k], want[k]) for k in want if not _close(have[k], want[k], 1e-6 if key == "accuracy_matrix" or same_cpu else 1e-3)}
        assert not bad, f"{name}: {key} differs from the reference ({reference['commit']}, {reference['cpu']}): {bad}"
    assert set(got["losses"]) == set(expected["losses"]), sorted(set(got["losses"]) ^ set(expected["losses"]))[:10]
    bad = {k: (got["losses"][k], v) for k, v in expected["losses"].items() if not _close(got["losses"][k], v, loss_tol)}
    assert not bad, f"{name}: training losses differ from the reference ({reference['commit']}, {reference['cpu']}): {bad}"


if __name__ == "__main__":  # python tests/test_behaviour_preserved.py --write
    import os
    import subprocess
    import tempfile

    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python tests/test_behaviour_preserved.py --write   (overwrites tests/data/behaviour_reference.json)")
    os.chdir(REPO)
    os.environ.setdefault("WANDB_MODE", "offline")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=REPO).stdout.strip()
    cases = {}
    for case in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            cases[case] = run_case(case, Path(tmp))
    REFERENCE.parent.mkdir(exist_ok=True)
    REFERENCE.write_text(json.dumps({"commit": commit, "cpu": cpu_name(), "threads": 2, "cases": cases}, indent=1) + "\n")
    print(f"wrote {REFERENCE}")
