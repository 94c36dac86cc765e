"""Integration: every paradigm config of the study, shrunk to a few batches, end to end."""
import json
from pathlib import Path

import pytest
import torch

from conftest import SHARED_MEDMNIST
from framework.callbacks.continual_eval import METRICS_CSV, METRICS_JSON, METRICS_PNG
from framework.cli import run_cli
from framework.paradigms import ContinualModule, JointModule, SpecializedModule
from helpers import shrink_config, train_losses_per_epoch

pytestmark = pytest.mark.skipif(not SHARED_MEDMNIST.is_dir(), reason="the paradigm configs read ../shared/data/medmnist")

TASKS = ["bloodmnist", "organamnist"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, cls, rows, trained",
    [
        ("specialized", SpecializedModule, 1, {0: set(TASKS)}),
        ("joint", JointModule, 1, {0: set(TASKS)}),
        ("sequential", ContinualModule, 2, {0: {"bloodmnist"}, 1: {"organamnist"}}),
        ("sequential_replay", ContinualModule, 2, {0: {"bloodmnist"}, 1: set(TASKS)}),
    ],
)
def test_paradigm_config_runs_end_to_end(tmp_path, name, cls, rows, trained):
    config = shrink_config(f"experiments/paradigms/{name}.yaml", tmp_path)
    cli = run_cli(["fit", "--config", str(config)])
    module = cli.model
    assert type(module) is cls
    assert list(module.task_specs) == TASKS

    result = json.loads((Path(cli.trainer.log_dir) / METRICS_JSON).read_text())
    assert result["tasks"] == TASKS
    assert len(result["accuracy_matrix"]) == rows
    final = result["accuracy_matrix"][-1]
    assert all(0.0 <= v <= 1.0 for v in final)
    assert result["average_accuracy"] == pytest.approx(sum(final) / 2)
    if rows == 2:
        # OrganA had no trained head after experience 0: its cell is the zero-shot score (FWT), not in the average
        assert result["learned_at"] == {"bloodmnist": 0, "organamnist": 1}
        assert 0.0 <= result["accuracy_matrix"][0][1] <= 1.0
        assert result["average_accuracy_per_experience"][0] == pytest.approx(result["accuracy_matrix"][0][0])
        assert result["fwt"] == pytest.approx(result["accuracy_matrix"][0][1] - result["random_init"]["organamnist"])
        assert result["forgetting"] == pytest.approx(max(0.0, result["accuracy_matrix"][0][0]) - final[0])
    else:
        assert result["forgetting"] is None
    assert (Path(cli.trainer.log_dir) / METRICS_CSV).is_file()
    assert (Path(cli.trainer.log_dir) / METRICS_PNG).stat().st_size > 1000

    # The paradigm, not the training step, decides which domains train when; replay adds the old one.
    assert train_losses_per_epoch(tmp_path, TASKS) == trained

    if cls is SpecializedModule:
        a, b = (module.models[t].backbone.clip.visual.conv1.weight for t in TASKS)
        assert a.data_ptr() != b.data_ptr() and not torch.equal(a, b)
        assert set(module.models["bloodmnist"].heads) == {"bloodmnist"}


def test_continual_schedule_errors_name_the_setting(tmp_path):
    config = shrink_config("experiments/paradigms/sequential.yaml", tmp_path, extra_trainer={"max_epochs": 3})
    with pytest.raises(ValueError, match="trainer.max_epochs is 3, but the stream has 2 experience.*set trainer.max_epochs: 2"):
        run_cli(["fit", "--config", str(config)])
    config = shrink_config("experiments/paradigms/sequential.yaml", tmp_path / "b", extra_trainer={"reload_dataloaders_every_n_epochs": 0})
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs must be 1"):
        run_cli(["fit", "--config", str(config)])


def test_every_regime_uses_the_same_data():
    from helpers import load_config
    from conftest import REPO

    datas = [load_config(REPO / f"experiments/paradigms/{n}.yaml")["data"] for n in ("specialized", "joint", "sequential", "sequential_replay")]
    assert all(d == datas[0] for d in datas)
    subsets = {d["init_args"]["train_subset"] for d in datas[0]["init_args"]["domains"]}
    assert subsets == {6000}
