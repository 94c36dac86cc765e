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

TASKS = ["bloodmnist", "organamnist", "pneumoniamnist", "retinamnist"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, cls, rows, trained",
    [
        ("specialized", SpecializedModule, 1, {0: set(TASKS)}),
        ("joint", JointModule, 1, {0: set(TASKS)}),
        ("sequential", ContinualModule, 4, {e: {t} for e, t in enumerate(TASKS)}),
        ("sequential_replay", ContinualModule, 4, {e: set(TASKS[: e + 1]) for e in range(4)}),
        ("sequential_replay_lwf", ContinualModule, 4, {e: set(TASKS[: e + 1]) for e in range(4)}),
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
    assert result["average_accuracy"] == pytest.approx(sum(final) / len(TASKS))
    if rows > 1:
        # a task had no trained head before its experience: its cells are zero-shot scores (FWT), not in the averages
        assert result["learned_at"] == {t: e for e, t in enumerate(TASKS)}
        assert result["average_accuracy_per_experience"][0] == pytest.approx(result["accuracy_matrix"][0][0])
        fwt = [result["accuracy_matrix"][j - 1][j] - result["random_init"][t] for j, t in enumerate(TASKS) if j > 0]
        assert result["fwt"] == pytest.approx(sum(fwt) / len(fwt))
        matrix = result["accuracy_matrix"]
        forgetting = [max(matrix[i][j] for i in range(j, rows - 1)) - final[j] for j in range(rows - 1)]
        assert result["forgetting"] == pytest.approx(sum(forgetting) / len(forgetting))
        bwt = [final[j] - matrix[j][j] for j in range(rows - 1)]
        assert result["bwt"] == pytest.approx(sum(bwt) / len(bwt))
    else:
        assert result["forgetting"] is None
    # the study's cross-domain and cross-task sets are scored after every experience (cross tasks need one shared model)
    assert len(result["cross_domain"]["bloodmnist_shifted"]["scores"]) == rows
    if cls is not SpecializedModule:
        assert len(result["cross_task"]["adrenalmnist3d"]["zero_shot"]) == rows
    assert (Path(cli.trainer.log_dir) / METRICS_CSV).is_file()
    assert (Path(cli.trainer.log_dir) / METRICS_PNG).stat().st_size > 1000

    # The paradigm, not the training step, decides which domains train when; replay adds the old one.
    assert train_losses_per_epoch(tmp_path, TASKS) == trained

    if cls is SpecializedModule:
        a, b = (module.models[t].backbone.clip.visual.conv1.weight for t in TASKS[:2])
        assert a.data_ptr() != b.data_ptr() and not torch.equal(a, b)
        assert set(module.models["bloodmnist"].heads) == {"bloodmnist"}


def test_continual_schedule_errors_name_the_setting(tmp_path):
    config = shrink_config("experiments/paradigms/sequential.yaml", tmp_path, extra_trainer={"max_epochs": 3})
    with pytest.raises(ValueError, match="trainer.max_epochs is 3, but the stream has 4 experience.*set trainer.max_epochs: 4"):
        run_cli(["fit", "--config", str(config)])
    config = shrink_config("experiments/paradigms/sequential.yaml", tmp_path / "b", extra_trainer={"reload_dataloaders_every_n_epochs": 0})
    with pytest.raises(ValueError, match="reload_dataloaders_every_n_epochs must be 1"):
        run_cli(["fit", "--config", str(config)])


def test_every_regime_uses_the_same_data():
    from helpers import load_config
    from conftest import REPO

    names = ("specialized", "joint", "sequential", "sequential_replay", "sequential_replay_samples", "sequential_replay_lwf")
    configs = [load_config(REPO / f"experiments/paradigms/{n}.yaml") for n in names]
    assert all(c["data"] == configs[0]["data"] for c in configs)
    subsets = {d["init_args"]["train_subset"] for d in configs[0]["data"]["init_args"]["domains"]}
    assert subsets == {1000}
    # every training image is seen as often in every regime: 3 epochs, per experience or jointly
    assert {c["model"]["init_args"].get("epochs_per_experience", c["trainer"]["max_epochs"]) for c in configs} == {3}
    # the rehearsal regimes keep at most 2 % of the training data
    for c in configs:
        for cb in c["trainer"]["callbacks"]:
            if cb["class_path"].endswith("ReplayCallback"):
                assert cb["init_args"]["capacity"] <= 0.02 * 4 * 1000
    # the sample-weighted regime is sequential + replay with one change
    plain, weighted = (configs[names.index(n)] for n in ("sequential_replay", "sequential_replay_samples"))
    assert weighted["model"]["init_args"].pop("task_loss_weighting") == "samples"
    assert weighted["model"]["init_args"] == plain["model"]["init_args"] and weighted["trainer"]["callbacks"] == plain["trainer"]["callbacks"]


@pytest.mark.parametrize("weighting", ["equal", "samples"])
def test_task_loss_weighting_combines_the_per_task_losses_of_a_batch(weighting):
    import torch

    from framework.paradigms import ContinualModule
    from framework.core.specs import TaskSpec

    module = ContinualModule(task_loss_weighting=weighting, head_args={"classification": {"learn_class_embeddings": True}})
    module.add_task(TaskSpec(name="a", kind="classification", class_names=("x", "y", "z")))
    module.add_task(TaskSpec(name="b", kind="classification", class_names=("u", "v")))
    module.eval()
    g = torch.Generator().manual_seed(0)
    batch = {"a": {"image": torch.rand(6, 3, 28, 28, generator=g), "target": torch.tensor([0, 1, 2, 0, 1, 2])},
             "b": {"image": torch.rand(2, 3, 28, 28, generator=g), "target": torch.tensor([0, 1])}}
    la, lb = (module._forward_task(t, batch[t])[2] for t in ("a", "b"))
    expected = la + lb if weighting == "equal" else (6 * la + 2 * lb) / 8
    assert torch.allclose(module.training_step(batch, 0), expected, atol=1e-6)


def test_unknown_task_loss_weighting_is_refused():
    from framework.paradigms import JointModule

    with pytest.raises(ValueError, match=r"JointModule: task_loss_weighting expected one of \['equal', 'samples'\], found 'mean'"):
        JointModule(task_loss_weighting="mean")
