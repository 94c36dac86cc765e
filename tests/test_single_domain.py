"""A single domain data module works with every paradigm without a stream."""
import pytest
import pytorch_lightning as pl

from framework.strategies import ExperienceCallback

from conftest import DEMO_DIR
from data_modules import MedMNISTDataModule
from framework.callbacks import ContinualEvaluation
from framework.paradigms import ContinualModule, JointModule, SpecializedModule


@pytest.mark.parametrize("cls, extra", [(JointModule, {}), (SpecializedModule, {}), (ContinualModule, {"epochs_per_experience": 1})])
def test_single_domain_fit(tmp_path, cls, extra):
    dm = MedMNISTDataModule("organamnist", data_dir=str(DEMO_DIR), train_subset=32, val_subset=16, test_subset=16, batch_size=16)
    module = cls(lr=1e-3, **extra)
    evaluation = ContinualEvaluation(output_dir=str(tmp_path))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         callbacks=[evaluation], default_root_dir=str(tmp_path), num_sanity_val_steps=0)
    trainer.fit(module, datamodule=dm)
    assert list(module.task_specs) == ["organamnist"]
    assert evaluation.result["tasks"] == ["organamnist"]
    assert len(evaluation.result["accuracy_matrix"]) == 1
    assert (tmp_path / "continual_metrics.json").is_file()


@pytest.mark.parametrize("kwargs, fragment", [({"lr": 0}, "lr expected"), ({"weight_decay": -1}, "weight_decay"), ({"optimizer_on_new_task": "keep"}, "optimizer_on_new_task")])
def test_module_argument_validation(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        JointModule(**kwargs)


def test_epochs_per_experience_validated():
    with pytest.raises(ValueError, match="epochs_per_experience expected an integer >= 1"):
        ContinualModule(epochs_per_experience=0)


def test_optimizer_reset_policy_rebuilds_adam_state(tmp_path):
    """`optimizer_on_new_task: reset` drops the Adam state when OrganA arrives; `extend` keeps it."""
    from data_modules import DomainStream

    states = {}
    for policy in ("extend", "reset"):
        stream = DomainStream([MedMNISTDataModule(f, data_dir=str(DEMO_DIR), train_subset=32, val_subset=16, test_subset=16, batch_size=16)
                               for f in ("bloodmnist", "organamnist")])
        module = ContinualModule(epochs_per_experience=1, optimizer_on_new_task=policy)

        class Spy(ExperienceCallback):
            def before_experience(self, trainer, pl_module, experience, tasks):
                opt = trainer.optimizers[0]
                backbone = opt.param_groups[0]["params"][0]
                states[(policy, experience)] = ([g["name"] for g in opt.param_groups], "exp_avg" in opt.state.get(backbone, {}))

        trainer = pl.Trainer(accelerator="cpu", max_epochs=2, reload_dataloaders_every_n_epochs=1, logger=False,
                             enable_progress_bar=False, enable_checkpointing=False, callbacks=[Spy()], num_sanity_val_steps=0,
                             limit_val_batches=0)
        trainer.fit(module, datamodule=stream)
    assert states[("extend", 1)] == (["backbone", "head:bloodmnist", "head:organamnist"], True)
    assert states[("reset", 1)] == (["backbone", "head:bloodmnist", "head:organamnist"], False)


def test_run_stopped_inside_an_experience_is_still_evaluated(tmp_path):
    """max_steps ends the stream during experience 0: the callback evaluates the model as it is."""
    from data_modules import DomainStream

    stream = DomainStream([MedMNISTDataModule(f, data_dir=str(DEMO_DIR), train_subset=64, val_subset=16, test_subset=16, batch_size=16)
                           for f in ("bloodmnist", "organamnist")])
    module = ContinualModule(epochs_per_experience=2)
    evaluation = ContinualEvaluation(output_dir=str(tmp_path))
    trainer = pl.Trainer(accelerator="cpu", max_epochs=4, max_steps=3, reload_dataloaders_every_n_epochs=1, logger=False,
                         enable_progress_bar=False, enable_checkpointing=False, callbacks=[evaluation], limit_val_batches=0)
    trainer.fit(module, datamodule=stream)
    assert evaluation.result["experiences"] == [0]
    assert evaluation.result["learned_at"]["organamnist"] is None  # never trained: its cell is a zero-shot score
    assert evaluation.result["average_accuracy"] == evaluation.result["accuracy_matrix"][0][0]  # not in the average
