"""Grown models reload strictly and re-evaluate identically; a stream resumes mid-way."""
import json
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from framework.callbacks import ReplayCallback
from framework.callbacks.continual_eval import METRICS_JSON
from framework.cli import run_cli
from framework.paradigms import ContinualModule, JointModule
from helpers import shrink_config

TASKS = ["bloodmnist", "organamnist"]


@pytest.fixture(scope="module")
def quickstart_run(tmp_path_factory):
    """The quickstart config (continual + replay on the demo data), shrunk, trained once."""
    out = tmp_path_factory.mktemp("quickstart")
    config = shrink_config("experiments/quickstart.yaml", out, train_subset=64, eval_subset=60)
    cli = run_cli(["fit", "--config", str(config)])
    run_dir = Path(cli.trainer.log_dir)
    return {"config": config, "cli": cli, "run_dir": run_dir, "ckpts": run_dir / "checkpoints"}


def test_checkpoint_stores_task_specs_and_buffer(quickstart_run):
    ckpt = torch.load(quickstart_run["ckpts"] / "last.ckpt", map_location="cpu", weights_only=True)
    assert [t["name"] for t in ckpt["medcl"]["tasks"]] == TASKS
    assert ckpt["medcl"]["paradigm"] == "ContinualModule"
    (replay_key,) = [k for k in ckpt["callbacks"] if k.startswith("ReplayCallback")]
    state = ckpt["callbacks"][replay_key]
    assert state["world_size"] == 1 and len(state["ranks"]) == 1
    buffer = state["ranks"][0]
    assert set(buffer["tasks"]) == set(TASKS)
    stored = sum(len(t["target"]) for t in buffer["tasks"].values())
    assert stored == 2 * 2 * 16  # 2 experiences x 2 batches x 16 samples, under the 300 budget
    assert all(t["image"].dtype == torch.uint8 for t in buffer["tasks"].values())  # stored as the data provides them


def test_strict_reload_re_evaluates_to_the_same_accuracy(quickstart_run):
    matrix = json.loads((quickstart_run["run_dir"] / METRICS_JSON).read_text())
    module = ContinualModule.load_from_checkpoint(quickstart_run["ckpts"] / "last.ckpt", strict=True, map_location="cpu")
    assert list(module.task_specs) == TASKS
    datamodule = quickstart_run["cli"].datamodule
    final_row = matrix["accuracy_matrix"][-1]
    for task, expected in zip(TASKS, final_row):
        got = module.evaluate(task, datamodule.eval_dataloader(task, "test"))["score"]
        assert got == pytest.approx(expected, abs=1e-6)


def test_cli_test_with_ckpt_path_matches(quickstart_run):
    cli = run_cli(["test", "--config", str(quickstart_run["config"]), "--ckpt_path", str(quickstart_run["ckpts"] / "last.ckpt")])
    matrix = json.loads((quickstart_run["run_dir"] / METRICS_JSON).read_text())
    logged = cli.trainer.callback_metrics
    for task, expected in zip(TASKS, matrix["accuracy_matrix"][-1]):
        assert float(logged[f"test/{task}/acc"]) == pytest.approx(expected, abs=1e-6)


def test_wrong_paradigm_class_is_refused(quickstart_run):
    with pytest.raises(ValueError, match="ContinualModule"):
        JointModule.load_from_checkpoint(quickstart_run["ckpts"] / "last.ckpt", map_location="cpu")


def test_missing_head_would_fail_strict_loading(quickstart_run):
    """Without the stored specs the grown heads have no home: strict loading must fail loudly."""
    ckpt = torch.load(quickstart_run["ckpts"] / "last.ckpt", map_location="cpu", weights_only=True)
    module = ContinualModule(**{k: v for k, v in ckpt["hyper_parameters"].items() if not k.startswith("_")})
    with pytest.raises(RuntimeError, match="Unexpected key"):
        module.load_state_dict(ckpt["state_dict"], strict=True)


class Probe(pl.Callback):
    """Captures the state right after Lightning restored the checkpoint."""

    def on_train_start(self, trainer, pl_module):
        replay = next(cb for cb in trainer.callbacks if isinstance(cb, ReplayCallback))
        self.buffer = replay.buffer.state_dict()
        self.tasks = list(pl_module.task_specs)
        self.head_weight = pl_module.model.heads["bloodmnist"].class_embeddings.detach().clone()
        self.start_epoch = trainer.current_epoch
        self.param_groups = [g.get("name") for g in trainer.optimizers[0].param_groups]


def test_resume_mid_stream_restores_buffer_heads_and_matrix(quickstart_run, tmp_path):
    mid = quickstart_run["ckpts"] / "experience=0-epoch=0.ckpt"  # end of experience 0 (BloodMNIST)
    ckpt = torch.load(mid, map_location="cpu", weights_only=True)
    assert [t["name"] for t in ckpt["medcl"]["tasks"]] == ["bloodmnist"]

    config = shrink_config("experiments/quickstart.yaml", tmp_path, train_subset=64, eval_subset=60)
    cli = run_cli(["--config", str(config)], run=False)
    probe = Probe()
    cli.trainer.callbacks.append(probe)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(mid))

    assert probe.start_epoch == 1  # experience 0 is not trained again
    assert probe.tasks == ["bloodmnist"]  # grown head rebuilt from the checkpoint, OrganA not yet
    (replay_key,) = [k for k in ckpt["callbacks"] if k.startswith("ReplayCallback")]
    saved = ckpt["callbacks"][replay_key]["ranks"][0]
    assert set(probe.buffer["tasks"]) == set(saved["tasks"]) == {"bloodmnist"}
    assert torch.equal(probe.buffer["tasks"]["bloodmnist"]["target"], saved["tasks"]["bloodmnist"]["target"])
    assert torch.equal(probe.buffer["tasks"]["bloodmnist"]["image"], saved["tasks"]["bloodmnist"]["image"])
    assert torch.equal(probe.head_weight, ckpt["state_dict"]["model.heads.bloodmnist.class_embeddings"])
    assert probe.param_groups == ["backbone", "head:bloodmnist"]

    module = cli.model
    assert list(module.task_specs) == TASKS  # grew OrganA after the resume
    resumed = json.loads((Path(cli.trainer.log_dir) / METRICS_JSON).read_text())
    original = json.loads((quickstart_run["run_dir"] / METRICS_JSON).read_text())
    assert len(resumed["accuracy_matrix"]) == 2
    assert resumed["accuracy_matrix"][0] == original["accuracy_matrix"][0]  # row 0 carried by the checkpoint
    replay = next(cb for cb in cli.trainer.callbacks if isinstance(cb, ReplayCallback))
    assert set(replay.buffer.counts()) == set(TASKS)


def test_resume_with_a_different_stream_is_refused(quickstart_run, tmp_path):
    import yaml

    config = shrink_config("experiments/quickstart.yaml", tmp_path, train_subset=64, eval_subset=60)
    data = yaml.safe_load(config.read_text())
    data["data"]["init_args"]["domains"].reverse()
    config.write_text(yaml.safe_dump(data))
    cli = run_cli(["--config", str(config)], run=False)
    with pytest.raises(ValueError, match="resume with the same domains in the same order"):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=str(quickstart_run["ckpts"] / "experience=0-epoch=0.ckpt"))


def test_predict_returns_class_predictions_per_task(quickstart_run):
    module = ContinualModule.load_from_checkpoint(quickstart_run["ckpts"] / "last.ckpt", map_location="cpu")
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, limit_predict_batches=1)
    predictions = trainer.predict(module, datamodule=quickstart_run["cli"].datamodule)
    by_task = {task: out[task] for outs in predictions for out in outs for task in out}
    assert set(by_task) == set(TASKS)
    blood = by_task["bloodmnist"]
    assert blood["prediction"].dtype == torch.int64 and int(blood["prediction"].max()) < 8
    assert blood["probabilities"].shape[1] == 8
    assert torch.allclose(blood["probabilities"].sum(1), torch.ones(len(blood["prediction"])), atol=1e-5)
    assert torch.equal(blood["probabilities"].argmax(1), blood["prediction"])
    assert "target" in blood  # the test split's labels travel with the predictions
    assert int(by_task["organamnist"]["prediction"].max()) < 11


def test_checkpoint_task_that_disagrees_with_the_data_is_refused(quickstart_run, tmp_path):
    import yaml

    config = shrink_config("experiments/quickstart.yaml", tmp_path, train_subset=64, eval_subset=60)
    data = yaml.safe_load(config.read_text())
    data["data"]["init_args"]["domains"][1]["init_args"]["prompt_template"] = "a CT image of the {}"
    config.write_text(yaml.safe_dump(data))
    with pytest.raises(ValueError, match=r"checkpoint field 'medcl.tasks\[1\]' \('organamnist'\) differs from the data's task"):
        run_cli(["test", "--config", str(config), "--ckpt_path", str(quickstart_run["ckpts"] / "last.ckpt")])
