"""Zero-shot retention: a pretrained model's known tasks (its pretraining domains) scored zero-shot
before training and after every experience (ZSCL's "Transfer")."""
import csv
import json
from pathlib import Path

import pytest
import yaml

from data_modules import DomainStream, MedMNISTDataModule, SegmentationDataModule
from framework.callbacks.continual_eval import CURVES_PNG, METRICS_CSV, METRICS_JSON
from framework.callbacks.continual_report import format_report
from framework.cli import run_cli
from framework.metrics.continual import zero_shot_retention
from framework.pretraining.contrastive import ContrastivePretraining


def test_retention_summary_means_over_tasks_then_experiences():
    out = zero_shot_retention({"a": 0.8, "b": 0.6}, [{"a": 0.7, "b": 0.5}, {"a": 0.5, "b": float("nan")}])
    assert out["start"] == pytest.approx(0.7)
    assert out["per_experience"] == pytest.approx([0.6, 0.5])  # an undefined score is skipped, not counted as 0
    assert out["transfer"] == pytest.approx(0.55)
    assert out["final"] == pytest.approx(0.5) and out["drop"] == pytest.approx(0.2)
    assert out["per_task"]["a"] == pytest.approx({"start": 0.8, "final": 0.5, "drop": pytest.approx(0.3)})
    assert out["per_task"]["b"]["drop"] is not None  # nan - 0.6 is nan: reported as computed
    empty = zero_shot_retention({"a": None}, [])
    assert empty["transfer"] is None and empty["drop"] is None


def _blood(**kw):
    return MedMNISTDataModule(flag="bloodmnist", data_dir="data/demo/medmnist", train_subset=32, val_subset=16, test_subset=96, **kw)


def test_known_tasks_must_be_classification_and_unique():
    seg = SegmentationDataModule(file="../shared/data/segmentation/kvasir_seg_64.npz", task_name="kvasir", label_names=["polyp"])
    with pytest.raises(ValueError, match=r"'known_tasks\[0\]' \(kvasir\) expected a classification task"):
        DomainStream(domains=[_blood()], known_tasks=[seg])
    with pytest.raises(ValueError, match=r"task name 'bloodmnist' is used by field 'domains\[0\]' and field 'known_tasks\[0\]'"):
        DomainStream(domains=[_blood()], known_tasks=[_blood()])


def _stream_config(tmp_path, make_npz, callbacks=()) -> Path:
    """Two toy experiences from ``pretrained: medmnist-blood-organa`` with BloodMNIST (a pretraining domain) as a known task."""
    toy = make_npz("pneumoniamnist.npz", n=(32, 8, 8), classes=2)
    domains = [
        {"class_path": "data_modules.MedMNISTDataModule", "init_args": {"flag": "pneumoniamnist", "data_dir": str(toy.parent), "batch_size": 16}},
        {"class_path": "data_modules.MedMNISTDataModule", "init_args": {"flag": "pneumoniamnist", "data_dir": str(toy.parent), "task_name": "pneumonia_b", "batch_size": 16}},
    ]
    known = {"class_path": "data_modules.MedMNISTDataModule", "init_args": {
        "flag": "bloodmnist", "data_dir": "data/demo/medmnist", "train_subset": 32, "val_subset": 16, "test_subset": 96}}
    config = {
        "seed_everything": 0,
        "model": {"class_path": "framework.paradigms.ContinualModule", "init_args": {
            "backbone": "medcl-vit-tiny-minilm", "pretrained": "medmnist-blood-organa", "epochs_per_experience": 1, "lr": 1e-3}},
        "data": {"class_path": "data_modules.DomainStream", "init_args": {"domains": domains, "known_tasks": [known]}},
        "trainer": {"max_epochs": 2, "reload_dataloaders_every_n_epochs": 1, "accelerator": "cpu", "default_root_dir": str(tmp_path),
                    "limit_train_batches": 2, "enable_progress_bar": False, "num_sanity_val_steps": 0,
                    "logger": [{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "run"}}],
                    "callbacks": [*callbacks, {"class_path": "framework.callbacks.ContinualEvaluation", "init_args": {"probe_samples_per_class": 0}}]},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_a_stream_from_the_shipped_model_reports_the_retention_of_its_pretraining_domains(tmp_path, make_npz):
    """The start row is the pretrained model's own zero-shot accuracy, and every experience adds a score."""
    cli = run_cli(["fit", "--config", str(_stream_config(tmp_path, make_npz))])
    run = Path(cli.trainer.log_dir)
    result = json.loads((run / METRICS_JSON).read_text())
    retention = result["zero_shot_retention"]
    assert list(retention["scores"]) == ["bloodmnist"] and len(retention["scores"]["bloodmnist"]) == 2
    # the start is the shipped model's own zero-shot accuracy on these 96 test images
    blood = _blood()
    blood.setup("test")
    module = ContrastivePretraining("medcl-vit-tiny-minilm", pretrained="medmnist-blood-organa")
    expected = module.zero_shot_scores([blood.loader("test", keyed=False)], [blood.task_spec])["bloodmnist"]
    assert retention["per_task"]["bloodmnist"]["start"] == pytest.approx(expected)
    assert expected > 0.5  # the shipped model knows blood cells (chance 1/8)
    assert retention["transfer"] == pytest.approx(sum(retention["scores"]["bloodmnist"]) / 2)
    assert retention["drop"] == pytest.approx(expected - retention["scores"]["bloodmnist"][-1])
    assert "bloodmnist" not in result["tasks"] and "bloodmnist" not in result["cross_task"]  # seen: never reported as unseen
    with open(run / METRICS_CSV) as fh:
        rows = list(csv.DictReader(fh))
    assert float(rows[-1]["known_task:bloodmnist:zero_shot"]) == pytest.approx(expected, abs=1e-6)
    assert float(rows[1]["known_task:bloodmnist:zero_shot"]) == pytest.approx(retention["scores"]["bloodmnist"][1], abs=1e-6)
    report = format_report(result)
    assert "Zero-shot retention" in report and "start (pretrained)" in report and "transfer (mean over experiences)" in report
    assert (run / CURVES_PNG).is_file()


# ---------------------------------------------------------------------------- WiSE-FT
def test_interpolate_weights_averages_matching_float_tensors_only():
    import torch

    from framework.callbacks.wise_ft import interpolate_weights

    module = torch.nn.Linear(2, 2)
    module.register_buffer("count", torch.tensor(7))
    with torch.no_grad():
        module.weight.fill_(1.0)
        module.bias.fill_(3.0)
    changed = interpolate_weights(module, {"weight": torch.zeros(2, 2), "bias": torch.zeros(3), "count": torch.tensor(0)}, alpha=0.25)
    assert changed == 1
    assert torch.allclose(module.weight, torch.full((2, 2), 0.25))
    assert torch.equal(module.bias, torch.full((2,), 3.0)) and int(module.count) == 7  # shape mismatch, integer buffer: untouched


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_wise_ft_alpha_must_be_in_the_unit_interval(alpha):
    from framework.callbacks import WiSEFT

    with pytest.raises(ValueError, match="alpha expected a number in \\[0, 1\\]"):
        WiSEFT(alpha)


def test_wise_ft_with_alpha_zero_keeps_the_pretrained_backbone_and_its_zero_shot_skill(tmp_path, make_npz):
    """alpha 0: after every experience the backbone is the pretrained one again, so the known task's
    zero-shot accuracy equals its start, while the heads of the new tasks were trained."""
    import torch

    wise = {"class_path": "framework.callbacks.WiSEFT", "init_args": {"alpha": 0.0}}
    path = _stream_config(tmp_path, make_npz)
    config = yaml.safe_load(path.read_text())
    config["trainer"]["callbacks"].append(wise)  # after ContinualEvaluation: it still scores the interpolated model
    path.write_text(yaml.safe_dump(config))
    cli = run_cli(["fit", "--config", str(path)])
    retention = json.loads((Path(cli.trainer.log_dir) / METRICS_JSON).read_text())["zero_shot_retention"]
    assert retention["scores"]["bloodmnist"] == pytest.approx([retention["per_task"]["bloodmnist"]["start"]] * 2)
    assert retention["drop"] == pytest.approx(0.0)
    pretrained = ContrastivePretraining("medcl-vit-tiny-minilm", pretrained="medmnist-blood-organa").backbone.state_dict()
    for key, value in cli.model.model.backbone.state_dict().items():
        assert torch.allclose(value, pretrained[key]), key


def test_wise_ft_is_refused_without_pretrained_weights(tmp_path, make_npz):
    wise = {"class_path": "framework.callbacks.WiSEFT", "init_args": {"alpha": 0.5}}
    path = _stream_config(tmp_path, make_npz, [wise])
    config = yaml.safe_load(path.read_text())
    config["model"]["init_args"]["pretrained"] = None
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="no pretrained weights"):
        run_cli(["fit", "--config", str(path)])


@pytest.mark.slow
def test_a_wise_ft_run_killed_after_an_experience_end_resumes_to_the_same_weights(tmp_path, make_npz):
    """The checkpoint of an experience end holds the interpolated backbone (WiSEFT acts before checkpoints), and a
    resumed run rebuilds the pretrained weights it interpolates towards: killed (SIGKILL) in experience 1 and
    resumed from last.ckpt, the run ends exactly like the uninterrupted one."""
    import os
    import subprocess
    import sys

    import torch

    from conftest import REPO

    def config(folder: Path, kill: bool) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        path = _stream_config(folder, make_npz, [{"class_path": "framework.callbacks.WiSEFT", "init_args": {"alpha": 0.5}}])
        data = yaml.safe_load(path.read_text())
        data["trainer"]["callbacks"].append({"class_path": "framework.callbacks.ExperienceCheckpoint"})
        if kill:
            data["trainer"]["callbacks"].append({"class_path": "kill_switch.KillAt", "init_args": {"epoch": 1, "batch": 1}})
        path.write_text(yaml.safe_dump(data))
        return path

    def medcl(*args, killed=False):
        env = dict(os.environ, PYTHONPATH=str(REPO / "tests"), PYTHONUNBUFFERED="1")
        proc = subprocess.run([str(Path(sys.executable).parent / "medcl"), *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == (-9 if killed else 0), proc.stderr[-4000:]

    medcl("fit", "--config", str(config(tmp_path / "whole", False)))
    medcl("fit", "--config", str(config(tmp_path / "parts", True)), killed=True)
    (run,) = (tmp_path / "parts" / "run").glob("version_*")
    medcl("fit", "--config", str(config(tmp_path / "parts", False)), "--ckpt_path", str(run / "checkpoints" / "last.ckpt"))
    (whole,) = (tmp_path / "whole" / "run").glob("version_*")
    a = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    b = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert set(a) == set(b)
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), atol=1e-6), key
