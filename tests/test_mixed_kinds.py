"""One model over classification, prognosis and segmentation: the real mixed configs, shrunk,
end to end (continual with replay, joint), strict reload, and `medcl predict` writing files."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import REPO
from framework.callbacks import ReplayCallback
from framework.callbacks.continual_eval import METRICS_CSV, METRICS_JSON
from framework.cli import run_cli
from framework.paradigms import ContinualModule
from helpers import shrink_config, train_losses_per_epoch

SHARED = REPO.parent / "shared" / "data"
pytestmark = pytest.mark.skipif(
    not (SHARED / "segmentation" / "kvasir_seg_64.npz").is_file() or not (SHARED / "medmnist" / "organamnist.npz").is_file(),
    reason="the mixed configs read ../shared/data",
)
TASKS = ["organamnist", "organa_survival_semisynthetic", "kvasir_seg"]
METRICS = {"organamnist": "acc", "organa_survival_semisynthetic": "c_index", "kvasir_seg": "dice"}


@pytest.fixture(scope="module")
def replay_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("mixed")
    config = shrink_config("experiments/mixed/continual_replay.yaml", out)
    cli = run_cli(["fit", "--config", str(config)])
    return {"cli": cli, "config": config, "dir": Path(cli.trainer.log_dir), "ckpt": next(out.rglob("last.ckpt"))}


@pytest.mark.slow
def test_continual_matrix_names_each_columns_metric(replay_run, capsys):
    result = json.loads((replay_run["dir"] / METRICS_JSON).read_text())
    assert result["tasks"] == TASKS and result["metrics"] == METRICS
    assert result["metric"] == ["acc", "c_index", "dice"]
    matrix = result["accuracy_matrix"]
    assert [row.count(None) for row in matrix] == [2, 1, 0]
    assert all(0.0 <= v <= 1.0 for v in matrix[-1])
    # the semi-synthetic task reports its oracle C-index beside the model's
    assert 0.5 < result["reference"]["organa_survival_semisynthetic"]["oracle_c_index"] < 1.0
    header = (replay_run["dir"] / METRICS_CSV).read_text().splitlines()[0]
    assert "organamnist (acc),organa_survival_semisynthetic (c_index),kvasir_seg (dice)" in header


@pytest.mark.slow
def test_replay_stores_every_kinds_targets_and_replays_them(replay_run):
    (replay,) = [c for c in replay_run["cli"].trainer.callbacks if isinstance(c, ReplayCallback)]
    stored = {}
    for task in replay.buffer.tasks():
        images, targets = replay.buffer.task_data(task)
        stored[task] = (tuple(images.shape[1:]), tuple(targets.shape[1:]), targets.dtype)
    assert stored["organamnist"][1] == () and stored["organamnist"][2] == torch.int64
    assert stored["organa_survival_semisynthetic"][1] == (2,)           # (time, event)
    assert stored["kvasir_seg"][:2] == ((3, 64, 64), (64, 64))         # image and its mask
    # old tasks' losses are trained again from the buffer, each by its own head
    assert train_losses_per_epoch(replay_run["dir"], TASKS) == {0: {TASKS[0]}, 1: set(TASKS[:2]), 2: set(TASKS)}


@pytest.mark.slow
def test_strict_reload_rebuilds_every_head_and_scores_the_same(replay_run):
    result = json.loads((replay_run["dir"] / METRICS_JSON).read_text())
    module = ContinualModule.load_from_checkpoint(replay_run["ckpt"], map_location="cpu", strict=True)
    assert list(module.task_specs) == TASKS
    datamodule = replay_run["cli"].datamodule
    for task, expected in zip(TASKS, result["accuracy_matrix"][-1]):
        assert module.evaluate(task, datamodule.eval_dataloader(task))["score"] == pytest.approx(expected, abs=1e-5)


@pytest.mark.slow
def test_joint_trains_all_three_kinds_in_every_batch(tmp_path):
    config = shrink_config("experiments/mixed/joint.yaml", tmp_path)
    cli = run_cli(["fit", "--config", str(config)])
    assert train_losses_per_epoch(tmp_path, TASKS) == {0: set(TASKS)}
    result = json.loads((Path(cli.trainer.log_dir) / METRICS_JSON).read_text())
    assert result["metrics"] == METRICS and len(result["accuracy_matrix"]) == 1


# ---------------------------------------------------------------- medcl predict
def predict(replay_run, tmp_path, path, task):
    cli = run_cli([
        "predict", "--config", str(replay_run["config"]), "--ckpt_path", str(replay_run["ckpt"]),
        "--trainer.default_root_dir", str(tmp_path), "--trainer.logger", "false",
        "--data.init_args.predict_path", str(path), "--data.init_args.predict_task", task,
    ])
    from framework.callbacks import PredictionWriter

    (writer,) = [cb for cb in cli.trainer.callbacks if isinstance(cb, PredictionWriter)]
    run = Path(replay_run["ckpt"]).parent.parent
    assert writer.root.parent == run and writer.root.name.startswith("predictions")  # under the checkpoint's run folder
    return writer.root / task, cli


def read_csv(path):
    with open(path) as fh:
        return list(csv.DictReader(fh))


@pytest.mark.slow
def test_predict_on_a_folder_of_png_images_writes_masks_and_probabilities(replay_run, tmp_path):
    from PIL import Image

    with np.load(SHARED / "segmentation" / "kvasir_seg_64.npz") as data:
        images = data["images"][data["split"] == 2][:3]
    folder = tmp_path / "polyps"
    folder.mkdir()
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"case{i}.png")
    out, _ = predict(replay_run, tmp_path / "seg", folder, "kvasir_seg")
    rows = read_csv(out / "predictions.csv")
    assert [r["id"] for r in rows] == ["case0", "case1", "case2"]
    masks = sorted((out / "masks").glob("*.png"))
    assert [m.name for m in masks] == ["case0.png", "case1.png", "case2.png"]
    mask = np.asarray(Image.open(masks[0]))
    assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}

    # grayscale CT slices through the classification head: one probability per organ, summing to 1
    with np.load(SHARED / "medmnist" / "organamnist.npz") as data:
        slices, labels = data["test_images"][:4], data["test_labels"][:4, 0]
    folder = tmp_path / "slices"
    folder.mkdir()
    for i, image in enumerate(slices):
        Image.fromarray(image).save(folder / f"slice{i}.png")
    out, _ = predict(replay_run, tmp_path / "cls", folder, "organamnist")
    rows = read_csv(out / "predictions.csv")
    probs = np.array([[float(r[k]) for k in r if k.startswith("p(")] for r in rows])
    assert probs.shape == (4, 11) and np.allclose(probs.sum(1), 1.0, atol=1e-4)
    assert "p(liver)" in rows[0] and all(int(r["prediction"]) == int(np.argmax(p)) for r, p in zip(rows, probs))


@pytest.mark.slow
def test_predict_on_an_npz_keeps_the_known_labels_and_risks(replay_run, tmp_path):
    with np.load(SHARED / "medmnist" / "organamnist.npz") as data:
        np.savez(tmp_path / "few.npz", images=data["test_images"][:5], labels=data["test_labels"][:5],
                 time=np.array([1.0, 5.0, 2.5, 9.0, 0.5]), event=np.array([1, 0, 1, 1, 0]))
    out, _ = predict(replay_run, tmp_path / "a", tmp_path / "few.npz", "organamnist")
    rows = read_csv(out / "predictions.csv")
    assert [int(r["index"]) for r in rows] == list(range(5)) and all("true_label" in r for r in rows)
    out, _ = predict(replay_run, tmp_path / "b", tmp_path / "few.npz", "organa_survival_semisynthetic")
    rows = read_csv(out / "predictions.csv")
    assert len(rows) == 5 and all(np.isfinite(float(r["risk"])) for r in rows)
    assert [(float(r["time"]), int(r["event"])) for r in rows] == [(1.0, 1), (5.0, 0), (2.5, 1), (9.0, 1), (0.5, 0)]


@pytest.mark.slow
def test_predict_refuses_a_volume_for_a_2d_only_task(replay_run, tmp_path):
    import nibabel as nib

    folder = tmp_path / "volumes"
    folder.mkdir()
    nib.save(nib.Nifti1Image(np.random.rand(28, 28, 6).astype(np.float32), np.eye(4)), str(folder / "ct.nii.gz"))
    with pytest.raises(ValueError, match=r"ct.nii.gz: holds a volume of shape \(28, 28, 6\), but task 'organamnist' is 2D-only"):
        predict(replay_run, tmp_path / "c", folder, "organamnist")
