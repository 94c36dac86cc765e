"""The configuration a run was made with, in its run folder and in its W&B run."""
from __future__ import annotations

from typing import Any, Dict

import pytorch_lightning as pl
import yaml
from pytorch_lightning.cli import SaveConfigCallback
from pytorch_lightning.loggers import WandbLogger

from framework.run_folder import config_file_name

__all__ = ["RecordConfig"]


class RecordConfig(SaveConfigCallback):
    """LightningCLI's ``SaveConfigCallback`` that never replaces a run's ``config.yaml`` and gives
    W&B the whole resolved configuration.

    * A command that continues a run folder (``fit --ckpt_path``, ``test``, ``predict``) writes its
      configuration beside the first one, as ``config.<subcommand>-<k>.yaml``.
    * Every W&B logger's run config gets ``model``, ``data``, ``trainer`` and ``seed_everything`` as
      resolved (Lightning itself logs only the model's arguments).
    """

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.already_saved and self.save_to_log_dir:
            log_dir = trainer.log_dir  # broadcast from rank 0: every rank calls it
            self.config_filename = config_file_name(log_dir, str(getattr(stage, "value", stage))) if log_dir else self.config_filename
        super().setup(trainer, pl_module, stage)

    def save_config(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        loggers = [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]
        if not loggers:
            return
        resolved: Dict[str, Any] = yaml.safe_load(self.parser.dump(self.config, skip_none=False)) or {}
        resolved = {key: value for key, value in resolved.items() if key in ("model", "data", "trainer", "seed_everything", "ckpt_path")}
        for logger in loggers:
            logger.experiment.config.update(resolved, allow_val_change=True)
