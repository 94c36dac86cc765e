"""ExperienceCheckpoint on a tiny LightningModule: which files it writes, when, and that a resume
from its ``last.ckpt`` carries on (no ``last-v1.ckpt``); ``every_n_epochs`` comes from the module."""
from __future__ import annotations

import pytorch_lightning as pl
import pytest
import torch
from pytorch_lightning.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from framework.callbacks import ExperienceCheckpoint


class Tiny(pl.LightningModule):
    """3 experiences of ``per_experience`` epochs, named as MedCL's paradigms name them."""

    def __init__(self, per_experience: int = 2, experiences: int = 3) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)
        self.per_experience, self.n = per_experience, experiences

    def epochs_per_experience(self) -> int:
        return self.per_experience

    def experience_of_epoch(self, epoch: int) -> int:
        return min(epoch // self.per_experience, self.n - 1)

    def is_last_epoch_of_experience(self, epoch: int) -> bool:
        return (epoch + 1) % self.per_experience == 0

    def training_step(self, batch, batch_idx):
        return self.layer(batch[0]).pow(2).mean()

    def train_dataloader(self):
        return DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=4)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Plain(Tiny):
    """A LightningModule without experiences."""

    epochs_per_experience = experience_of_epoch = is_last_epoch_of_experience = None


class LastProbe(pl.Callback):
    """Records, after every epoch end, the global steps of the trainer and of ``last.ckpt`` (Lightning
    runs checkpoint callbacks last at an epoch end: this reads at the next epoch start and at the end)."""

    def __init__(self, folder):
        self.folder, self.steps, self.epochs = folder, [], 0

    def _record(self, trainer):
        ckpt = torch.load(self.folder / "last.ckpt", map_location="cpu", weights_only=False)
        self.steps.append((trainer.global_step, ckpt["global_step"]))

    def on_train_epoch_start(self, trainer, pl_module):
        if self.epochs:  # after an epoch of this run (a resumed run starts after the checkpoint's)
            self._record(trainer)
        self.epochs += 1

    def on_train_end(self, trainer, pl_module):
        self._record(trainer)


class Killed(Exception):
    pass


class StopAt(pl.Callback):
    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            raise Killed(f"killed at the start of epoch {self.epoch}")  # as a killed run: no further checkpoint


def trainer(tmp_path, max_epochs, *callbacks):
    return pl.Trainer(
        max_epochs=max_epochs, default_root_dir=tmp_path, callbacks=list(callbacks), logger=False,
        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu",
    )


def names(folder):
    return sorted(p.name for p in folder.iterdir())


def test_last_every_epoch_and_one_file_per_experience_end(tmp_path):
    folder = tmp_path / "ckpts"
    checkpoint, probe = ExperienceCheckpoint(dirpath=str(folder)), LastProbe(folder)
    trainer(tmp_path, 6, checkpoint, probe).fit(Tiny())
    assert checkpoint.every_n_epochs == 2  # read from the module at setup
    assert names(folder) == ["experience=0-epoch=1.ckpt", "experience=1-epoch=3.ckpt", "experience=2-epoch=5.ckpt", "last.ckpt"]
    assert probe.steps == [(2 * e, 2 * e) for e in range(1, 7)]  # last.ckpt is the model of every epoch end
    assert checkpoint.last_model_path == str(folder / "last.ckpt")
    assert checkpoint.best_model_path == str(folder / "experience=2-epoch=5.ckpt")


def test_a_module_without_experiences_counts_every_epoch(tmp_path):
    folder = tmp_path / "ckpts"
    checkpoint = ExperienceCheckpoint(dirpath=str(folder))
    trainer(tmp_path, 3, checkpoint).fit(Plain())
    assert checkpoint.every_n_epochs == 1
    assert names(folder) == ["experience=0-epoch=0.ckpt", "experience=1-epoch=1.ckpt", "experience=2-epoch=2.ckpt", "last.ckpt"]


def test_resume_from_last_mid_experience_carries_on(tmp_path):
    folder = tmp_path / "ckpts"
    with pytest.raises(Killed):  # killed at the start of epoch 3: last.ckpt is epoch 2's (mid-experience 1)
        trainer(tmp_path, 6, ExperienceCheckpoint(dirpath=str(folder)), StopAt(3)).fit(Tiny())
    assert names(folder) == ["experience=0-epoch=1.ckpt", "last.ckpt"]
    saved = torch.load(folder / "last.ckpt", map_location="cpu", weights_only=False)
    assert saved["epoch"] == 2 and saved["global_step"] == 6
    checkpoint, probe = ExperienceCheckpoint(dirpath=str(folder)), LastProbe(folder)
    trainer(tmp_path, 6, checkpoint, probe).fit(Tiny(), ckpt_path=str(folder / "last.ckpt"))
    assert names(folder) == ["experience=0-epoch=1.ckpt", "experience=1-epoch=3.ckpt", "experience=2-epoch=5.ckpt", "last.ckpt"]
    assert probe.steps == [(8, 8), (10, 10), (12, 12)]


def test_state_key_is_that_of_earlier_checkpoints():
    """Checkpoints written before every_n_epochs was set at setup hold the state under every_n_epochs=1."""
    checkpoint = ExperienceCheckpoint()
    before = ModelCheckpoint(save_top_k=-1).state_key.replace("ModelCheckpoint", "ExperienceCheckpoint", 1)
    assert checkpoint.state_key == before
    checkpoint.setup(trainer_stub := pl.Trainer(logger=False, accelerator="cpu", max_epochs=6), Tiny(), "fit")
    assert checkpoint.every_n_epochs == 2 and checkpoint.state_key == before and trainer_stub is not None
