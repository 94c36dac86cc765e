"""benchmarks/avalanche_compare.py: MedCL against Avalanche on the same data, model and budget.

The script runs shrunk in a subprocess (results to tmp_path) and the JSON it writes is checked.
The MedCL half must run without Avalanche (CI does not install the ``bench`` extra): that test
hides any installed Avalanche behind a package that fails to import.  The Avalanche half is
skipped when avalanche-lib is not installed.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, SHARED_MEDMNIST

BENCHMARKS = REPO / "benchmarks"
needs_shared = pytest.mark.skipif(
    not all((SHARED_MEDMNIST / f"{flag}.npz").is_file() for flag in ("bloodmnist", "organamnist")), reason="reads ../shared/data/medmnist"
)
SMOKE = ["--train-subset", "48", "--test-subset", "64", "--epochs", "1", "--experiences", "2", "--accuracy-seeds"]  # no extra seeds


def run_script(args, results: Path, env=None) -> dict:
    proc = subprocess.run(
        [sys.executable, "avalanche_compare.py", *SMOKE, "--results", str(results), *args],
        cwd=BENCHMARKS, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "torch threads: 2" in proc.stdout
    for suffix in ("json", "md", "png"):
        assert (results / f"avalanche_compare.{suffix}").is_file()
    return json.loads((results / "avalanche_compare.json").read_text())


def check_run(run: dict, framework: str) -> None:
    assert run["framework"] == framework
    assert run["tasks"] == ["bloodmnist", "organamnist"]
    matrix = run["accuracy_matrix"]
    assert len(matrix) == 2 and all(len(row) == 2 for row in matrix)
    assert matrix[0][1] is None  # no OrganA head after the first experience
    assert all(0.0 <= v <= 1.0 for row in matrix for v in row if v is not None)
    medcl = run["medcl_metrics"]
    assert medcl["forgetting"] is not None and medcl["bwt"] is not None
    assert medcl["average_accuracy"] == pytest.approx(sum(matrix[-1]) / 2)
    times = run["times"]
    for key in ("setup_s", "train_s", "eval_s", "total_s"):
        assert times[key] > 0, key
    assert times["total_s"] >= times["train_s"] + times["eval_s"]
    assert len(times["eval_per_experience_s"]) == 2


@needs_shared
@pytest.mark.slow
def test_medcl_half_runs_without_avalanche(tmp_path):
    hidden = tmp_path / "hide"
    (hidden / "avalanche").mkdir(parents=True)
    (hidden / "avalanche" / "__init__.py").write_text("raise ImportError('avalanche hidden by the test')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(hidden), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    data = run_script(["--frameworks", "medcl", "--strategies", "naive", "--repeats", "2", "--accuracy-seeds", "1"], tmp_path / "out", env=env)
    assert list(data["runs"]) == ["medcl/naive"]
    per_seed = data["seed_runs"]["medcl/naive"]
    assert list(per_seed) == ["0", "1"] and per_seed["0"]["average_accuracy"] == data["runs"]["medcl/naive"]["medcl_metrics"]["average_accuracy"]
    assert per_seed["1"]["train_s"] > 0 and len(per_seed["1"]["final_row"]) == 2  # seed 1 trained
    assert "## Accuracy over seeds" in (tmp_path / "out" / "avalanche_compare.md").read_text()
    run = data["runs"]["medcl/naive"]
    check_run(run, "medcl")
    assert len(run["times_per_repeat"]) == 2 and run["repeats_identical"] is True  # a MedCL run repeats exactly
    assert run["avalanche_metrics"] is None and data["setup"]["versions"]["avalanche"] is None
    assert data["setup"]["torch_threads"] == 2
    assert data["setup"]["test_sizes"] == [64, 64]
    assert run["settings"]["config"].startswith(str(tmp_path / "out"))  # generated configs stay with the results
    # --collect-only rewrites the report from the JSON without training
    (tmp_path / "out" / "avalanche_compare.md").unlink()
    proc = subprocess.run([sys.executable, "avalanche_compare.py", "--collect-only", "--results", str(tmp_path / "out")],
                          cwd=BENCHMARKS, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| MedCL | naive |" in (tmp_path / "out" / "avalanche_compare.md").read_text()


@needs_shared
@pytest.mark.slow
def test_both_frameworks_on_identical_data_and_weights(tmp_path):
    pytest.importorskip("avalanche")
    data = run_script(["--strategies", "naive", "replay_reservoir", "--repeats", "1"], tmp_path)
    assert list(data["runs"]) == [
        "medcl/naive", "avalanche/naive", "avalanche_medcl_order/naive", "medcl/replay_reservoir", "avalanche/replay_reservoir",
    ]
    for key, run in data["runs"].items():
        check_run(run, key.split("/")[0].replace("_medcl_order", ""))
        aval, medcl = run["avalanche_metrics"], run["medcl_metrics"]
        # Avalanche's forgetting is "just learned - last" (= -BWT); MedCL's takes the best earlier row
        assert aval["forgetting"] == pytest.approx(-medcl["bwt"])
        assert aval["bwt"] == pytest.approx(medcl["bwt"])
        assert medcl["forgetting"] >= aval["forgetting"] - 1e-12
        assert set(aval["forgetting_per_task"]) == {"bloodmnist"}
        assert 0.0 <= aval["stream_accuracy_sample_weighted"] <= 1.0
        assert run["times"]["train_steps"] == 2 and run["times"]["train_cpu_s"] > 0
    for strategy in ("naive", "replay_reservoir"):
        comparison = data["comparison"][strategy]
        assert comparison["initial_weights_identical"] is True
        assert comparison["train_data_identical"] is True
        assert comparison["train_ratio_medcl_over_avalanche"] > 0 and comparison["total_ratio_medcl_over_avalanche"] > 0
    # the same model, data, optimizer and batch order give the same training, bit for bit
    assert data["comparison"]["naive"]["max_abs_difference_medcl_vs_avalanche_with_medcl_order"] == 0.0
    assert data["comparison"]["naive"]["final_weights_identical_medcl_vs_avalanche_with_medcl_order"] is True
    assert data["comparison"]["naive"]["max_abs_weight_difference_medcl_vs_avalanche_with_medcl_order"] == 0.0
    replay = data["runs"]["avalanche/replay_reservoir"]["settings"]
    assert replay["grayscale_widened_to_3_channels"] is True
    assert "ReservoirSamplingBuffer(max_size=500)" in replay["replay"]["plugin"]
    assert data["runs"]["medcl/replay_reservoir"]["settings"]["replay"]["final_buffer"] == {"bloodmnist": 48, "organamnist": 48}
    assert replay["replay"]["final_buffer"] == {"bloodmnist": 48, "organamnist": 48}
    markdown = (tmp_path / "avalanche_compare.md").read_text()
    assert "forgetting (Avalanche def.)" in markdown and "MedCL's batch order (check)" in markdown


def test_avalanche_definitions_fed_a_matrix_differ_from_medcl_where_they_should():
    pytest.importorskip("avalanche")
    sys.path.insert(0, str(BENCHMARKS))
    try:
        from avalanche_compare import avalanche_metrics
    finally:
        sys.path.remove(str(BENCHMARKS))
    from framework.metrics.continual import summarize

    tasks = ["a", "b", "c"]
    R = [[0.5, None, None], [0.8, 0.6, None], [0.4, 0.5, 0.9]]
    aval = avalanche_metrics(R, tasks, [100, 300, 100])
    medcl = summarize(R, tasks)
    assert medcl["forgetting"] == pytest.approx(((0.8 - 0.4) + (0.6 - 0.5)) / 2)  # best earlier row
    assert aval["forgetting"] == pytest.approx(((0.5 - 0.4) + (0.6 - 0.5)) / 2)  # row that learned it
    assert aval["forgetting_per_task"] == pytest.approx({"a": 0.1, "b": 0.1})
    assert aval["bwt"] == pytest.approx(medcl["backward_transfer"]) and aval["bwt_per_task"] == pytest.approx({"a": -0.1, "b": -0.1})
    assert aval["stream_accuracy_sample_weighted"] == pytest.approx((0.4 * 100 + 0.5 * 300 + 0.9 * 100) / 500)
    assert medcl["average_accuracy"] == pytest.approx((0.4 + 0.5 + 0.9) / 3)
