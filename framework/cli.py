"""``medcl fit|validate|test|predict --config experiments/<name>.yaml`` — a LightningCLI."""
from __future__ import annotations

import os
from typing import List, Optional

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

from data_modules import DomainStream  # noqa: F401  (registers class paths for the CLI)
from framework.paradigms import MedCLModule

__all__ = ["MedCLCLI", "main"]


class MedCLCLI(LightningCLI):
    """LightningCLI with MedCL defaults: any paradigm as ``model``, any data module as ``data``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"seed_everything": 0})


def main(args: Optional[List[str]] = None) -> None:
    # Offline-first: W&B writes locally unless the user opts in (WANDB_MODE=online or offline: false).
    os.environ.setdefault("WANDB_SILENT", "true")
    MedCLCLI(
        MedCLModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
    )


if __name__ == "__main__":  # pragma: no cover
    main()
