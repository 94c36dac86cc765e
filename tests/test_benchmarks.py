"""Shrunken smoke runs of the benchmark scripts (CI does not run the benchmarks themselves), and
the seed aggregation of the paradigm study on hand-made runs."""
import json
from pathlib import Path
import subprocess
import sys

import pytest

from conftest import REPO, SHARED_MEDMNIST

BENCHMARKS = REPO / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import paradigm_study  # noqa: E402
from helpers import shrink_config  # noqa: E402


def run_script(name: str, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """``python benchmarks/<name> ARGS`` from the benchmarks folder, as the docs say; fails with its output."""
    done = subprocess.run([sys.executable, name, *args], cwd=BENCHMARKS, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _run(avg, forgetting, wall, final):
    return {"summary": {"final": final, "average_accuracy": avg, "mean_auroc": avg + 0.2, "forgetting": forgetting, "bwt": None if forgetting is None else -forgetting,
                        "fwt": None, "cross_domain": 0.4, "cross_task_zero_shot": None, "cross_task_probe": None, "wall_time_s": wall}}


def test_paradigm_study_aggregates_mean_and_sample_std_over_seeds_and_states_the_gap():
    runs = {
        "joint": {"0": _run(0.60, None, 50, {"a": 0.6, "b": 0.6}), "1": _run(0.64, None, 52, {"a": 0.7, "b": 0.58})},
        "sequential": {"0": _run(0.40, 0.30, 90, {"a": 0.2, "b": 0.6}), "1": _run(0.44, 0.20, 94, {"a": 0.3, "b": 0.58})},
        "sequential_replay": {"0": _run(0.58, 0.05, 100, {"a": 0.55, "b": 0.61}), "1": _run(0.60, 0.03, 104, {"a": 0.6, "b": 0.6})},
    }
    agg = paradigm_study.aggregate(runs)
    assert agg["joint"]["seeds"] == [0, 1]
    assert agg["joint"]["average_accuracy"]["mean"] == pytest.approx(0.62)
    assert agg["joint"]["average_accuracy"]["std"] == pytest.approx(0.02 * 2**0.5)  # sample std of (0.60, 0.64)
    assert agg["joint"]["forgetting"] == {"mean": None, "std": None, "n": 0}  # one experience: not applicable
    assert agg["sequential"]["final"]["a"]["mean"] == pytest.approx(0.25)
    gap = paradigm_study.verdict(agg)
    assert gap["joint_minus_sequential"] == pytest.approx(0.62 - 0.42)
    assert gap["joint_minus_replay"] == pytest.approx(0.62 - 0.59)
    assert gap["gap_closed_fraction"] == pytest.approx((0.59 - 0.42) / (0.62 - 0.42))
    assert gap["replay_within_3_points_of_joint"] is (0.62 - 0.59 <= 0.03)
    text = paradigm_study.markdown(agg, gap, [0, 1])
    assert "0.620 ± 0.028" in text and "replay closes 85 % of the gap" in text
    assert paradigm_study.verdict({k: v for k, v in agg.items() if k != "joint"}) == {}  # no joint run: no verdict


def _shared_only():
    if not SHARED_MEDMNIST.is_dir():
        pytest.skip("reads ../shared/data/medmnist")


@pytest.mark.heavy  # the whole study script at a shrunken budget: about a minute idle; the study configs run end to end in test_paradigms.py
def test_paradigm_study_script_smoke(tmp_path):
    _shared_only()
    # the real sequential + replay config, shrunk (small subsets, 2 batches per experience) by --configs
    configs = tmp_path / "configs"
    configs.mkdir()
    shrink_config("experiments/paradigms/sequential_replay.yaml", tmp_path / "run").rename(configs / "sequential_replay.yaml")
    run_script("paradigm_study.py", "--regimes", "sequential_replay", "--seeds", "3", "--configs", str(configs), "--results", str(tmp_path))
    result = json.loads((tmp_path / "paradigm_study.json").read_text())
    assert result["seeds"] == [3]
    run = result["runs"]["sequential_replay"]["3"]
    assert run["tasks"] == ["bloodmnist", "organamnist", "pneumoniamnist", "retinamnist"]
    assert len(run["accuracy_matrix"]) == 4 and run["summary"]["forgetting"] is not None
    assert run["summary"]["cross_domain"] is not None and run["summary"]["cross_task_probe"] is not None
    assert result["aggregate"]["sequential_replay"]["average_accuracy"]["n"] == 1
    assert (tmp_path / "paradigm_study.png").stat().st_size > 1000
    assert "sequential + replay" in (tmp_path / "paradigm_study.md").read_text()


@pytest.mark.slow
def test_overhead_script_smoke(tmp_path):
    run_script("overhead.py", "--steps", "3", "--warmup", "1", "--bf16-steps", "2", "--repeats", "1", "--breakdown-epochs", "1", "--breakdown-batches", "3", "--ablations", "replay", "--results", str(tmp_path))
    r = json.loads((tmp_path / "overhead.json").read_text())
    for key in ("hand", "medcl_bare", "hand_replay", "medcl_full", "hand_bf16", "hand_bf16_math_attention", "hand_fp32_math_attention", "medcl_bf16", "medcl_bf16_math_attention"):
        assert r["throughput"][key]["images_per_s"] > 0
    assert len(r["throughput"]["medcl_full"]["repeats"]) == 1 and r["repeats"] == 1
    assert r["bf16_profile"]["bf16"]["attention_share"] > 0  # the fused CPU flash-attention kernel is timed
    assert len(r["paired_ratios"]["medcl_full"]) == 1 and r["paired_ratios"]["medcl_full"][0] > 0
    assert r["hooks"]["step_ms"] > 0 and r["hooks"]["callback_hooks_ms"]["ReplayCallback"] > 0
    assert r["throughput"]["hand_replay"]["images_per_step"] == 96  # 64 current + 32 replayed
    assert r["throughput"]["medcl_full"]["images_per_step"] == 96
    assert r["flops"]["flops_per_step"] > 1e9 and 0 < r["flops"]["mfu_medcl"]
    parts = r["breakdown"]["parts_s"]
    assert parts["training steps (forward, backward, optimizer)"] > 0 and parts["checkpoint writes"] > 0
    assert parts["experience-end evaluation + random-init reference (ContinualEvaluation)"] > 0
    assert sum(parts.values()) == pytest.approx(r["breakdown"]["wall_s"], rel=1e-6)
    assert list(r["ablation"]) == ["without ReplayCallback (64 images per step)"]
    assert r["matmul"]["fp32_peak_gflops"] > 0 and r["bf16_profile"]["bf16"]["top"]
    assert "bf16 against fp32" in (tmp_path / "overhead.md").read_text()


@pytest.mark.slow
def test_scaling_script_smoke(tmp_path):
    run_script("scaling.py", "--experiences", "3", "--train-subset", "128", "--eval-subset", "64", "--capacity", "50", "--results", str(tmp_path))
    r = json.loads((tmp_path / "scaling.json").read_text())
    assert [row["experience"] for row in r["rows"]] == [1, 2, 3]
    assert [row["seen_tasks"] for row in r["rows"]] == [1, 2, 3]
    assert all(row["train_s"] > 0 and row["experience_end_s"] > 0 and row["peak_rss_mib"] > 0 for row in r["rows"])
    assert [row["buffer_samples"] for row in r["rows"]][-1] == 50  # the fixed budget, full
    assert r["analysis"]["flat"] in (True, False)
    assert all(row["train_median_s"] > 0 and row["train_cpu_s"] > 0 and row["steps"] == 2 for row in r["rows"])  # 128 images, batch 64
    assert r["capped"]["max_tasks_per_step"] == 1 and len(r["capped"]["rows"]) == 3
    assert "max_tasks_per_step=1" in (tmp_path / "scaling.md").read_text()
    assert (tmp_path / "scaling.png").stat().st_size > 1000


@pytest.mark.slow
def test_medmnist_baselines_script_smoke(tmp_path):
    _shared_only()
    limits = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1"]
    # the per-domain BatchNorm diagnostic scores the full test sets (~22,000 images): left out of CI
    # its run goes to tmp_path too: a run under the repository's runs/ would become the "latest" that --collect-only reads
    run_script("medmnist_baselines.py", "--epochs", "1", "--no-per-domain-bn", "--results", str(tmp_path), "--runs", str(tmp_path / "runs"),
               "--", *limits, "--trainer.logger=false")
    r = json.loads((tmp_path / "medmnist_baselines.json").read_text())
    assert r["epochs"] == 1 and "per_domain_bn" not in r
    assert Path(r["run"]).is_relative_to(tmp_path)
    assert set(r["table"]) == {"bloodmnist", "organamnist", "pneumoniamnist", "retinamnist"}
    for row in r["table"].values():
        assert 0 <= row["acc"] <= 1 and 0 <= row["auroc"] <= 1 and row["published"]["acc"] > 0.5
    assert "published ACC" in (tmp_path / "medmnist_baselines.md").read_text()


@pytest.mark.heavy  # writes volumes, two measuring processes: about a minute
def test_volume_memory_script_smoke(tmp_path):
    run_script("volume_memory.py", "--slices", "8", "24", "--side", "64", "--modes", "slabs", "whole", "--results", str(tmp_path))
    result = json.loads((tmp_path / "volume_memory.json").read_text())
    assert [(r["slices"], r["mode"]) for r in result["rows"]] == [(8, "slabs"), (8, "whole"), (24, "slabs"), (24, "whole")]
    assert all(r["peak_rss_mib"] >= r["model_rss_mib"] > 0 for r in result["rows"])
    assert "Slab by slab (glibc default), peak RSS changes by" in (tmp_path / "volume_memory.md").read_text()
    # --append keeps those rows and adds slab rows measured with a fixed glibc mmap threshold
    run_script("volume_memory.py", "--slices", "8", "24", "--side", "64", "--modes", "slabs", "--append",
               "--malloc-mmap-threshold", "1048576", "--results", str(tmp_path))
    rows = json.loads((tmp_path / "volume_memory.json").read_text())["rows"]
    assert sorted((r["slices"], r["mode"], r.get("malloc_mmap_threshold") or "", bool(r.get("reused"))) for r in rows) == [
        (8, "slabs", "", True), (8, "slabs", "1048576", False), (8, "whole", "", True),
        (24, "slabs", "", True), (24, "slabs", "1048576", False), (24, "whole", "", True)]
    assert "Slab by slab (MALLOC_MMAP_THRESHOLD_=1048576), peak RSS changes by" in (tmp_path / "volume_memory.md").read_text()


@pytest.mark.heavy  # generates a collection and trains three times in fresh processes: about 2 minutes
def test_large_collection_script_smoke(tmp_path):
    run_script("large_collection.py", "--volumes", "5", "10", "--shape", "64", "64", "16", "--results", str(tmp_path), timeout=900)
    result = json.loads((tmp_path / "large_collection.json").read_text())
    assert [(r["source"], r["volumes"]) for r in result["rows"]] == [("NIfTI files", 5), ("NIfTI files", 10), ("npz (in memory)", 5)]
    assert all(len(r["images_per_s"]) == 2 and r["peak_rss_mib"] > 0 for r in result["rows"])


@pytest.mark.heavy  # torch.compile builds kernels: several minutes
def test_speed_script_smoke(tmp_path):
    run_script("speed.py", "--steps", "3", "--warmup", "2", "--repeats", "1", "--seeds", "0", "--quickstart-epochs", "1",
               "--results", str(tmp_path), timeout=1800)
    result = json.loads((tmp_path / "speed.json").read_text())
    assert {"fp32", "fp32_compile", "fp32_compile_all"} <= set(result["throughput"])
    assert "fp32" in result["quickstart"] and result["fastest"] in result["quickstart"]
