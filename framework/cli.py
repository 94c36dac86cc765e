"""``medcl fit|validate|test|predict --config experiments/<name>.yaml`` — a LightningCLI."""
from __future__ import annotations

import os
import sys
from typing import List, Optional

import pytorch_lightning as pl
from pytorch_lightning.cli import LightningCLI

from framework.paradigms import MedCLModule

__all__ = ["MedCLCLI", "main", "run_cli"]


class MedCLCLI(LightningCLI):
    """LightningCLI with MedCL defaults: any paradigm as ``model``, any data module as ``data``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"seed_everything": 0})

    def before_predict(self) -> None:
        """``medcl predict`` writes files: add a :class:`PredictionWriter` unless the config has one."""
        from framework.callbacks import PredictionWriter

        if not any(isinstance(c, PredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())


def run_cli(args: Optional[List[str]] = None, run: bool = True) -> MedCLCLI:
    """Run the MedCL CLI in-process and return it (its ``trainer``, ``model``, ``datamodule``).

    Args:
        args: command-line arguments (``["fit", "--config", "experiments/quickstart.yaml"]``);
            ``None`` reads ``sys.argv``.
        run: run the subcommand; ``False`` only instantiates the objects (then ``args`` has no subcommand).
    """
    # Offline-first: W&B writes locally unless the user opts in (WANDB_MODE=online or offline: false).
    os.environ.setdefault("WANDB_SILENT", "true")
    return MedCLCLI(
        MedCLModule,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        # Paradigms build their own AdamW with one named parameter group per head, so that groups
        # can be added as the model grows and line up again on resume.
        auto_configure_optimizers=False,
        args=args,
        run=run,
    )


def _root_cause(err: BaseException) -> BaseException:
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        nxt = err.__cause__ or err.__context__
        if nxt is None:
            break
        err = nxt
    return err


def main() -> None:
    """Entry point of the ``medcl`` console script.

    Configuration and data errors are printed as one line naming the file or field; set
    ``MEDCL_TRACEBACK=1`` to see the full traceback.
    """
    try:
        run_cli()
    except (ValueError, FileNotFoundError, KeyError) as err:
        if os.environ.get("MEDCL_TRACEBACK"):
            raise
        cause = _root_cause(err)
        message = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
        print(f"medcl: error: {type(cause).__name__}: {message}\n(set MEDCL_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":  # pragma: no cover
    main()
