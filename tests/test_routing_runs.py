"""A model with a task router, end to end on the shrunk quickstart: it learns each image source at the
end of its experience, the experience-end evaluation reports routing and task-agnostic scores and
the OOD AUROC of a never-learned domain (JSON, CSV, printout, plot), the router survives the
checkpoint, and ``medcl predict`` without a task routes a folder of mixed images."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from conftest import REPO
from helpers import shrink_config

from framework.cli import run_cli
from framework.core.checkpoints import load_checkpoint

SHARED = REPO.parent / "shared" / "data" / "medmnist"
DEMO = REPO / "data" / "demo" / "medmnist"
pytestmark = pytest.mark.skipif(not (SHARED / "pneumoniamnist.npz").is_file(), reason="needs ../shared/data/medmnist (CI has it)")


def _config(tmp_path: Path, kind: str) -> Path:
    path = shrink_config("experiments/quickstart.yaml", tmp_path / "run", train_subset=96, eval_subset=64)
    config = yaml.safe_load(path.read_text())
    config["model"]["init_args"]["router"] = {"kind": kind, "samples_per_source": 96}
    config["data"]["init_args"]["unknown_domains"] = [
        {"class_path": "data_modules.MedMNISTDataModule",
         "init_args": {"flag": "pneumoniamnist", "data_dir": str(SHARED), "train_subset": 8, "val_subset": 8, "test_subset": 64}},
    ]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("routed")
    config = _config(tmp_path, "gaussian")
    cli = run_cli(["fit", "--config", str(config)])
    (metrics,) = list((tmp_path / "run").rglob("continual_metrics.json"))
    return {"config": config, "cli": cli, "run": metrics.parent, "result": json.loads(metrics.read_text())}


def test_the_router_learns_each_source_when_its_experience_ends(trained):
    router = trained["cli"].model.model.router
    assert router.sources == ["bloodmnist", "organamnist"]
    assert router.tasks_of == {"bloodmnist": ["bloodmnist"], "organamnist": ["organamnist"]}
    assert set(router.thresholds) == {"bloodmnist", "organamnist"}


def test_the_evaluation_reports_routing_task_agnostic_scores_and_ood_auroc(trained, capsys):
    section = trained["result"]["task_agnostic"]
    assert section["router"] == "gaussian" and section["sources"] == ["bloodmnist", "organamnist"]
    assert section["routing_accuracy"]["organamnist"][0] is None  # not learned after the first experience
    assert all(0.8 <= v <= 1 for v in (section["routing_accuracy"]["bloodmnist"][-1], section["routing_accuracy"]["organamnist"][-1]))
    matrix = trained["result"]["accuracy_matrix"]
    for j, task in enumerate(trained["result"]["tasks"]):  # a wrong route can only cost: never above the task-aware score
        assert section["scores"][task][-1] <= matrix[-1][j] + 1e-6
    assert section["gap"][-1] == pytest.approx(section["task_aware_average"][-1] - section["average"][-1])
    union = section["union_head"]  # right over the union of classes implies right within the task's own head
    assert union["scores"]["bloodmnist"][0] is None and set(union["scores"]) == {"bloodmnist", "organamnist"}
    for j, task in enumerate(trained["result"]["tasks"]):
        assert 0 <= union["scores"][task][-1] <= matrix[-1][j] + 1e-6
    auroc = section["ood"]["pneumoniamnist"]["auroc"]
    assert len(auroc) == 2 and all(0 <= v <= 1 for v in auroc)
    header = (trained["run"] / "continual_metrics.csv").read_text().splitlines()[0].split(",")
    assert {"routing:bloodmnist", "task_agnostic:organamnist", "task_agnostic_average", "task_agnostic_gap", "ood_auroc:pneumoniamnist"} <= set(header)
    assert (trained["run"] / "task_agnostic.png").is_file()


def test_the_router_is_restored_from_the_checkpoint(trained):
    ckpt = trained["run"] / "checkpoints" / "last.ckpt"
    state = load_checkpoint(ckpt)["state_dict"]
    assert any(k.endswith("router._extra_state") for k in state)
    cli = run_cli(["--config", str(trained["config"])], run=False)
    module = cli.model
    module.expect_checkpoint_weights()
    module.load_state_dict(state, strict=False)  # the heads are grown from the checkpoint's specs on a real restore
    router, original = module.model.router, trained["cli"].model.model.router
    assert router.sources == original.sources and router.thresholds == original.thresholds
    with np.load(DEMO / "organamnist.npz") as z:
        images = torch.from_numpy(z["test_images"][:16])[:, None]
    assert torch.equal(router(images).source, original(images).source)


def test_predict_without_a_task_routes_a_mixed_folder(trained, tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    truth = {}
    for flag in ("bloodmnist", "organamnist"):
        with np.load(DEMO / f"{flag}.npz") as z:
            for i in range(4):
                Image.fromarray(z["test_images"][i]).save(folder / f"{flag}_{i}.png")
                truth[f"{flag}_{i}"] = flag
    ckpt = trained["run"] / "checkpoints" / "last.ckpt"
    out = tmp_path / "predictions"
    run_cli(["predict", "--config", str(trained["config"]), "--ckpt_path", str(ckpt), "--data.init_args.predict_path", str(folder),
             "--trainer.callbacks+=framework.callbacks.PredictionWriter", f"--trainer.callbacks.output_dir={out}"])
    with open(out / "routed" / "predictions.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["id"] for r in rows) == sorted(truth)
    routed_right = [r["source"] == truth[r["id"]] for r in rows]
    assert sum(routed_right) >= 7
    for row in rows:
        assert 0 <= float(row["confidence"]) <= 1 and row["unknown_score"]
        if row["source"] != "unknown":
            assert row["tasks"] == row["source"] and row[f"{row['source']}:prediction"] != ""
            other = "organamnist" if row["source"] == "bloodmnist" else "bloodmnist"
            assert row[f"{other}:prediction"] == ""  # only the routed source's tasks predict


def test_predict_without_a_task_and_without_a_router_says_how_to_fix_it(tmp_path):
    config = shrink_config("experiments/quickstart.yaml", tmp_path / "run", train_subset=16, eval_subset=16)
    folder = tmp_path / "mixed"
    folder.mkdir()
    with np.load(DEMO / "bloodmnist.npz") as z:
        Image.fromarray(z["test_images"][0]).save(folder / "a.png")
    with pytest.raises(ValueError, match=r"field 'predict_task' expected one of \['bloodmnist', 'organamnist'\].*found None; without it, the model must route"):
        run_cli(["predict", "--config", str(config), "--data.init_args.predict_path", str(folder)])


def test_growing_a_checkpoint_into_a_model_with_another_router_setting_is_refused(trained, tmp_path):
    # the router's sources and frozen tower are part of the model: a model without one cannot take them, and a
    # checkpoint without one has no learned sources to route its tasks to
    config = yaml.safe_load(trained["config"].read_text())
    config["model"]["init_args"].pop("router")
    config["model"]["init_args"]["init_from"] = str(trained["run"] / "checkpoints" / "last.ckpt")
    config["trainer"]["default_root_dir"] = str(tmp_path / "grown")
    path = tmp_path / "grown.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    with pytest.raises(ValueError, match=r"the checkpoint's model differs from this configuration \(router: checkpoint \{'kind': 'gaussian'.*config None\)"):
        run_cli(["fit", "--config", str(path)])


SEGMENTATION = REPO.parent / "shared" / "data" / "segmentation" / "kvasir_seg_64.npz"


@pytest.mark.skipif(not SEGMENTATION.is_file(), reason="needs ../shared/data/segmentation (CI has it)")
def test_a_routed_organ_slice_gets_both_its_tasks_and_a_routed_polyp_frame_its_mask(tmp_path):
    """The mixed-kind routing experiment, shrunk: OrganA classes and the semi-synthetic OrganA risk share one
    source, Kvasir-SEG is another; predicting a folder without a task writes both OrganA predictions for an
    organ slice and a mask for a polyp frame."""
    path = shrink_config("experiments/routing/mixed_kinds_replay.yaml", tmp_path / "run", train_subset=64, eval_subset=32, batch_size=16)
    config = yaml.safe_load(path.read_text())
    config["model"]["init_args"]["router"]["samples_per_source"] = 64
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = run_cli(["fit", "--config", str(path)])
    router = cli.model.model.router
    assert router.tasks_of == {"organamnist": ["organamnist", "organa_survival_semisynthetic"], "kvasir_seg": ["kvasir_seg"]}
    (metrics,) = list((tmp_path / "run").rglob("continual_metrics.json"))
    section = json.loads(metrics.read_text())["task_agnostic"]
    assert section["sources"] == ["organamnist", "kvasir_seg"] and set(section["scores"]) == {"organamnist", "organa_survival_semisynthetic", "kvasir_seg"}
    assert "pneumoniamnist" in section["ood"]
    folder = tmp_path / "mixed"
    folder.mkdir()
    with np.load(SHARED / "organamnist.npz") as z:
        for i in range(3):
            Image.fromarray(z["test_images"][i]).save(folder / f"organ_{i}.png")
    with np.load(SEGMENTATION) as z:
        frames = z["images"][z["split"] == list(z["split_names"]).index("test")] if "split_names" in z.files else z["images"]
        for i in range(3):
            Image.fromarray(frames[i]).save(folder / f"polyp_{i}.png")
    out = tmp_path / "predictions"
    run_cli(["predict", "--config", str(path), "--ckpt_path", str(metrics.parent / "checkpoints" / "last.ckpt"),
             "--data.init_args.predict_path", str(folder), "--trainer.callbacks+=framework.callbacks.PredictionWriter",
             f"--trainer.callbacks.output_dir={out}"])
    with open(out / "routed" / "predictions.csv", newline="") as fh:
        rows = {r["id"]: r for r in csv.DictReader(fh)}
    organ = [r for i, r in rows.items() if i.startswith("organ") and r["source"] == "organamnist"]
    polyp = [r for i, r in rows.items() if i.startswith("polyp") and r["source"] == "kvasir_seg"]
    assert organ and polyp, {i: r["source"] for i, r in rows.items()}
    for row in organ:
        assert row["tasks"] == "organamnist+organa_survival_semisynthetic"
        assert row["organamnist:prediction"] != "" and row["organa_survival_semisynthetic:risk"] != ""
    for row in polyp:
        assert row["tasks"] == "kvasir_seg" and (out / row["kvasir_seg:mask"]).is_file()
        assert Image.open(out / row["kvasir_seg:mask"]).size == (64, 64)


def test_a_router_trains_beside_lwf_and_its_checkpoint_restores(tmp_path):
    """LwF keeps a teacher copy of the model: without the router (its frozen tower is not kept twice)."""
    path = shrink_config("experiments/strategies/replay_lwf.yaml", tmp_path / "run", train_subset=32, eval_subset=32, batch_size=16)
    config = yaml.safe_load(path.read_text())
    config["model"]["init_args"]["router"] = {"kind": "gaussian", "samples_per_source": 32}
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = run_cli(["fit", "--config", str(path)])
    lwf = next(c for c in cli.trainer.callbacks if type(c).__name__ == "LwF")
    assert lwf.teacher is not None and lwf.teacher.router is None and cli.model.model.router is not None
    assert len(cli.model.model.router.sources) == 4
    ckpt = next((tmp_path / "run").rglob("last.ckpt"))
    run_cli(["test", "--config", str(path), "--ckpt_path", str(ckpt)])  # the teacher is rebuilt and loaded strictly
