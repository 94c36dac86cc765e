"""The evaluation protocol: forward transfer, cross-domain sets, cross-task zero-shot and linear
probe, secondary metrics, and the files they are written to."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SHARED_MEDMNIST
from data_modules import DomainStream, MedMNISTDataModule, SegmentationDataModule, ShiftedCopyDataModule
from framework.callbacks.continual_eval import CURVES_PNG, METRICS_CSV, METRICS_JSON, METRICS_PNG
from framework.callbacks.continual_report import format_report, pending_mask
from framework.cli import run_cli
from framework.metrics.continual import format_matrix, summarize
from framework.metrics.evaluation import fresh_head, linear_probe, probe_indices, supports_zero_shot
from framework.model import MedCLModel
from helpers import shrink_config

needs_shared = pytest.mark.skipif(not SHARED_MEDMNIST.is_dir(), reason="reads ../shared/data/medmnist")


# ---------------------------------------------------------------- summaries
def test_forward_transfer_uses_the_cell_before_training_against_the_random_init_reference():
    R = [[0.8, 0.30, 0.20], [0.7, 0.90, 0.25], [0.6, 0.80, 0.90]]
    out = summarize(R, ["a", "b", "c"], random_init={"b": 0.10, "c": 0.15})
    assert out["forward_transfer_per_task"] == pytest.approx({"a": None, "b": 0.20, "c": 0.10})
    assert out["forward_transfer"] == pytest.approx(0.15)
    # zero-shot cells never enter the averages
    assert out["average_accuracy_per_experience"] == pytest.approx([0.8, 0.8, (0.6 + 0.8 + 0.9) / 3])
    assert out["backward_transfer"] == pytest.approx(((0.6 - 0.8) + (0.8 - 0.9)) / 2)


def test_forward_transfer_is_none_without_a_reference_or_a_before_cell():
    R = [[0.8, None], [0.7, 0.9]]
    assert summarize(R, ["a", "b"])["forward_transfer"] is None
    assert summarize(R, ["a", "b"], random_init={"b": 0.5})["forward_transfer"] is None


def test_pending_cells_are_shown_in_parentheses():
    text = format_matrix([[0.5, 0.25]], ["a", "b"], pending=[[False, True]])
    assert "(0.250)" in text and "(0.500)" not in text
    result = {"tasks": ["a", "b"], "accuracy_matrix": [[0.5, 0.25], [0.4, 0.6]], "learned_at": {"a": 0, "b": 1}}
    assert pending_mask(result) == [[False, True], [False, False]]


# ---------------------------------------------------------------- stream fields
def _blood(**kw):
    return MedMNISTDataModule(flag="bloodmnist", data_dir="data/demo/medmnist", train_subset=32, val_subset=16, test_subset=48, batch_size=16, **kw)


def test_cross_domains_must_be_keyed_by_a_stream_task():
    with pytest.raises(ValueError, match=r"'cross_domains' is keyed by 'organ'.*not a task of the stream"):
        DomainStream(domains=[_blood()], cross_domains={"organ": [_blood(task_name="blood_b")]})


def test_cross_domain_must_describe_the_same_task():
    organ = MedMNISTDataModule(flag="organamnist", data_dir="data/demo/medmnist", task_name="organ_b")
    with pytest.raises(ValueError, match=r"cross_domains.bloodmnist\[0\]' \(organ_b\) has class_names"):
        DomainStream(domains=[_blood()], cross_domains={"bloodmnist": [organ]})


def test_cross_task_must_be_classification(tmp_path):
    seg = SegmentationDataModule(file="../shared/data/segmentation/kvasir_seg_64.npz", task_name="kvasir", label_names=["polyp"])
    with pytest.raises(ValueError, match=r"'cross_tasks\[0\]' \(kvasir\) expected a classification task.*'segmentation'"):
        DomainStream(domains=[_blood()], cross_tasks=[seg])


def test_cross_names_must_be_unique():
    with pytest.raises(ValueError, match=r"task name 'bloodmnist' is used by field 'domains\[0\]' and field 'cross_tasks\[0\]'"):
        DomainStream(domains=[_blood()], cross_tasks=[_blood()])


# ---------------------------------------------------------------- shifted copy
def test_shifted_copy_changes_images_not_labels_and_is_deterministic():
    copy = ShiftedCopyDataModule(_blood(), task_name="blood_shifted", gamma=1.5, blur_sigma=0.8, noise_std=0.05)
    copy.setup()
    source, shifted = copy.source.dataset("test"), copy.dataset("test")
    assert copy.task_spec.name == "blood_shifted" and copy.task_spec.class_names == copy.source.task_spec.class_names
    a, b = source[3], shifted[3]
    assert torch.equal(a["target"], b["target"])
    assert b["image"].dtype == torch.float32 and 0 <= b["image"].min() and b["image"].max() <= 1
    assert (b["image"] - a["image"].float() / 255).abs().mean() > 0.02
    assert torch.equal(shifted[3]["image"], b["image"])  # same noise every time


@pytest.mark.parametrize("field, value, expected", [("gamma", 0.0, "> 0"), ("blur_sigma", -1.0, ">= 0"), ("brightness", 2.0, r"in \[-1, 1\]")])
def test_shifted_copy_validates(field, value, expected):
    with pytest.raises(ValueError, match=f"field '{field}' expected {expected}, found"):
        ShiftedCopyDataModule(_blood(), task_name="s", **{field: value})
    with pytest.raises(ValueError, match="field 'task_name' expected a new name"):
        ShiftedCopyDataModule(_blood(), task_name="bloodmnist")


# ---------------------------------------------------------------- zero-shot heads and the probe
def test_only_prompt_heads_support_zero_shot():
    blood = _blood().task_spec
    seg = SegmentationDataModule(file="../shared/data/segmentation/kvasir_seg_64.npz", task_name="kvasir", label_names=["polyp"]).task_spec
    assert supports_zero_shot(blood) and not supports_zero_shot(seg)


def test_fresh_head_is_seeded_and_not_added_to_the_model():
    model = MedCLModel(backbone={"model_name": "medcl-vit-tiny"}, head_args={"classification": {"learn_class_embeddings": True}})
    spec = _blood().task_spec
    state = torch.random.get_rng_state()
    a, b = fresh_head(model, spec, {"learn_class_embeddings": True}), fresh_head(model, spec, {"learn_class_embeddings": True})
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is untouched
    assert torch.equal(a.class_embeddings, b.class_embeddings) and model.tasks == []


def test_probe_indices_take_a_fixed_budget_per_class():
    y = np.array([0] * 30 + [1] * 5 + [2] * 12)
    idx = probe_indices(y, 10, seed=0)
    assert np.bincount(y[idx]).tolist() == [10, 5, 10]
    assert np.array_equal(idx, probe_indices(y, 10, seed=0))


@needs_shared
def test_linear_probe_is_deterministic_and_reports_secondary_metrics():
    dm = MedMNISTDataModule(flag="pneumoniamnist", data_dir=str(SHARED_MEDMNIST), train_subset=200, test_subset=100, batch_size=64)
    dm.setup()
    model = MedCLModel(backbone={"model_name": "medcl-vit-tiny"}).eval()
    run = lambda: linear_probe(model, dm.task_spec, dm.loader("train", keyed=False, shuffle=False), dm.loader("test", keyed=False), torch.device("cpu"), samples_per_class=8)  # noqa: E731
    first, second = run(), run()
    assert first == second
    assert first["train_samples"] == 16 and set(first) >= {"acc", "balanced_acc", "auroc", "score"}
    assert 0.0 <= first["acc"] <= 1.0 and 0.0 <= first["auroc"] <= 1.0


# ---------------------------------------------------------------- end to end, the real config shrunk
@needs_shared
@pytest.mark.slow
def test_protocol_config_writes_cross_domain_cross_task_bwt_fwt(tmp_path):
    config = shrink_config("experiments/protocol/held_back_pneumonia.yaml", tmp_path)
    cli = run_cli(["fit", "--config", str(config)])
    run_dir = Path(cli.trainer.log_dir)
    result = json.loads((run_dir / METRICS_JSON).read_text())
    tasks = ["bloodmnist", "organamnist", "retinamnist"]
    assert result["tasks"] == tasks and len(result["accuracy_matrix"]) == 3
    for key in ("bwt", "fwt", "cross_domain", "cross_task", "random_init", "secondary"):
        assert key in result
    # before-training cells of later tasks are zero-shot scores; FWT is computed from them
    assert result["learned_at"] == {"bloodmnist": 0, "organamnist": 1, "retinamnist": 2}
    assert all(0.0 <= v <= 1.0 for v in (result["accuracy_matrix"][0][1], result["accuracy_matrix"][1][2]))
    expected_fwt = np.mean([result["accuracy_matrix"][0][1] - result["random_init"]["organamnist"],
                            result["accuracy_matrix"][1][2] - result["random_init"]["retinamnist"]])
    assert result["fwt"] == pytest.approx(expected_fwt)
    pneumonia = result["cross_task"]["pneumoniamnist"]
    assert len(pneumonia["zero_shot"]) == len(pneumonia["linear_probe"]) == 3
    assert all(0.0 <= v <= 1.0 for v in pneumonia["zero_shot"] + pneumonia["linear_probe"])
    assert pneumonia["linear_probe_details"][0]["train_samples"] == 20  # 10 per class, 2 classes
    assert set(pneumonia["random_init"]) == {"zero_shot", "linear_probe"}
    assert result["linear_probe_budget"]["samples_per_class"] == 10
    assert len(result["secondary"]["auroc"]) == 3 and len(result["secondary"]["balanced_acc"][2]) == 3
    assert "pneumoniamnist" not in cli.model.task_specs  # never trained
    with open(run_dir / METRICS_CSV) as fh:
        rows = list(csv.reader(fh))
    assert "cross_task:pneumoniamnist:linear_probe" in rows[0] and "bloodmnist:auroc" in rows[0]
    assert rows[-1][0] == "random_init" and len(rows) == 5
    for png in (METRICS_PNG, CURVES_PNG):
        assert (run_dir / png).read_bytes()[:4] == b"\x89PNG"
    report = format_report(result)
    assert "Cross-task" in report and "Secondary metrics" in report and "FWT" in report


@needs_shared
@pytest.mark.slow
def test_cross_domain_set_is_tested_with_its_task_head(tmp_path):
    config = shrink_config("experiments/strategies/naive.yaml", tmp_path, train_batches=1)
    cli = run_cli(["fit", "--config", str(config)])
    result = json.loads((Path(cli.trainer.log_dir) / METRICS_JSON).read_text())
    entry = result["cross_domain"]["bloodmnist_shifted"]
    assert entry["task"] == "bloodmnist" and entry["metric"] == "acc" and len(entry["scores"]) == 4
    assert all(0.0 <= v <= 1.0 for v in entry["scores"]) and entry["random_init"] is not None
    assert "cross_domain:bloodmnist_shifted" in (Path(cli.trainer.log_dir) / METRICS_CSV).read_text().splitlines()[0]


def _train_tiny_stream(callbacks):
    import pytorch_lightning as pl

    from framework.paradigms import ContinualModule

    pl.seed_everything(0)
    stream = DomainStream([MedMNISTDataModule(f, data_dir="data/demo/medmnist", train_subset=48, val_subset=16, test_subset=32, batch_size=16)
                           for f in ("bloodmnist", "organamnist")])
    module = ContinualModule(epochs_per_experience=1, head_args={"classification": {"learn_class_embeddings": True}})
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, reload_dataloaders_every_n_epochs=1, logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=callbacks, limit_val_batches=0)
    trainer.fit(module, datamodule=stream)
    return module.state_dict()


def test_the_evaluation_protocol_does_not_change_training(tmp_path):
    """Its test loaders, the reference model and the untrained heads run on a forked generator."""
    from framework.callbacks import ContinualEvaluation

    plain = _train_tiny_stream([])
    evaluated = _train_tiny_stream([ContinualEvaluation(output_dir=str(tmp_path))])
    assert plain.keys() == evaluated.keys()
    assert all(torch.equal(plain[k], evaluated[k]) for k in plain)
