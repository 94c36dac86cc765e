"""``medcl fit|validate|test|predict --config experiments/<name>.yaml`` — a LightningCLI (``medcl pretrain``: framework/pretraining/cli.py).

The checks run before the CLI builds anything are in :mod:`framework.cli_checks`; the one-line error
reporting of the console scripts is in :mod:`framework.cli_errors`.
"""
from __future__ import annotations

import contextlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any, List, Optional

import pytorch_lightning as pl
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from framework.backbone.architecture import forget_checkpoint_architectures, register_checkpoint_architecture
from framework.cli_checks import check_class_paths, check_ckpt_model, plain_args
from framework.cli_errors import error_line, one_line_errors
from framework.config_includes import check_config_includes
from framework.config_placeholders import fill_placeholders
from framework.config_record import RecordConfig
from framework.console import quiet_known_noise
from framework.core.checkpoints import AtomicCheckpointIO
from framework.paradigms import MedCLModule
from framework.run_folder import RunFolders, find_last_in_config, keep_csv_history

__all__ = ["MedCLCLI", "main", "run_cli", "check_class_paths", "one_line_errors", "error_line"]

#: ``--ckpt_path`` values Lightning resolves itself (``last`` is resolved by MedCL, see ``MedCLCLI.before_instantiate_classes``)
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


class MedCLCLI(LightningCLI):
    """LightningCLI with MedCL defaults: any paradigm as ``model``, any data module as ``data``.

    A command that ends releases its run folder (:mod:`framework.run_folder`); one that fails also
    removes the output it started but never checkpointed.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """As :class:`LightningCLI`, which parses, builds and runs the subcommand in its constructor."""
        try:
            super().__init__(*args, **kwargs)
        except BaseException:  # while parsing, building (data, model, trainer) or running
            _finish(getattr(self, "run_folders", None), failed=True)
            raise
        _finish(getattr(self, "run_folders", None), failed=False)

    def add_arguments_to_parser(self, parser) -> None:
        # Lightning's summary counts parameters before the heads grow and shows 0 FLOPs (framework/console.py)
        parser.set_defaults({"seed_everything": 0, "trainer.enable_model_summary": False})

    def parse_arguments(self, parser, args) -> None:
        """Refuse a config file that would drop the settings of a file it includes
        (:func:`~framework.config_includes.check_config_includes`), parse, then refuse a
        ``--ckpt_path`` whose model differs from the configuration
        (:func:`~framework.cli_checks.check_ckpt_model`); ``--ckpt_path last`` is resolved (and
        checked) in :meth:`before_instantiate_classes`."""
        argv = sys.argv[1:] if args is None else args  # a dict or Namespace of arguments names no file
        check_config_includes([str(a) for a in argv] if isinstance(argv, (list, tuple)) else [])
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if ckpt_path and ckpt_path not in LIGHTNING_CKPT_KEYWORDS:
            check_ckpt_model(ckpt_path, self.config[subcommand]["model"], subcommand)

    def _parse_ckpt_path(self) -> None:
        """Keep the user's ``model`` section: LightningCLI's own step would copy the ``--ckpt_path``
        checkpoint's hyper-parameters over it (silently replacing fields that
        :func:`~framework.cli_checks.check_ckpt_model` lets differ); MedCL checks instead.

        Private in Lightning, and overridden on purpose: ``LightningCLI.__init__`` calls it between
        :meth:`parse_arguments` and :meth:`before_instantiate_classes`, and no public argument or
        hook turns that copy off.  Pinned in constraints.txt; tests/test_private_apis.py fails if
        Lightning renames it, changes its signature or stops calling it there.
        """

    def before_instantiate_classes(self) -> None:
        """Fill the run-folder placeholders (:mod:`framework.config_placeholders`), resolve
        ``--ckpt_path last`` and settle the run folder (:mod:`framework.run_folder`) before anything
        is built: a new run claims its own folder, a checkpoint's command writes into the
        checkpoint's run folder and W&B run."""
        subcommand = self.subcommand
        config = self.config[subcommand] if subcommand else self.config
        fill_placeholders(config, (config.get("trainer") or {}).get("default_root_dir"))
        if not subcommand:
            return
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            found, searched = find_last_in_config(config.get("trainer"))
            if found is None:
                raise ValueError(
                    f"--ckpt_path last: no last.ckpt in {', '.join(searched)} (expected a checkpoints/last.ckpt written by an earlier "
                    f"run of this config, with ModelCheckpoint(save_last=true)); pass the checkpoint's path instead"
                )
            rank_zero_info(f"medcl: --ckpt_path last -> {found}")
            check_ckpt_model(str(found), config["model"], subcommand)
            config["ckpt_path"] = ckpt_path = str(found)
        init_from = plain_args(config["model"]).get("init_from")
        if init_from and Path(str(init_from)).is_file():  # a missing file is refused, naming it, when the model loads it
            register_checkpoint_architecture(str(init_from), f"init_from {str(init_from)!r}")
        self.run_folders = RunFolders(subcommand)
        self.run_folders.prepare(config, ckpt_path if ckpt_path not in LIGHTNING_CKPT_KEYWORDS else None)
        if self.run_folders.path is not None:
            rank_zero_info(f"medcl: run folder {self.run_folders.path}" + (" (continued)" if self.run_folders.continued else ""))

    def instantiate_classes(self) -> None:
        """Build the classes with the run folder's settings (see :meth:`RunFolders.applied`)."""
        folders = getattr(self, "run_folders", None)
        with folders.applied() if folders is not None else contextlib.nullcontext():
            super().instantiate_classes()
        if folders is not None and folders.continued:
            keep_csv_history(self.trainer)
        if self.subcommand and self.config[self.subcommand].get("ckpt_path") and isinstance(self.model, MedCLModule):
            self.model.expect_checkpoint_weights()  # no pretrained file is read: the checkpoint holds every weight

    def instantiate_trainer(self, **kwargs: Any) -> pl.Trainer:
        """Every MedCL trainer writes checkpoints atomically and loads them safely (:class:`AtomicCheckpointIO`)."""
        config = self.config_init.get(self.subcommand, self.config_init) if self.subcommand else self.config_init
        plugins = kwargs["plugins"] if "plugins" in kwargs else (config.get("trainer") or {}).get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        return super().instantiate_trainer(**{**kwargs, "plugins": plugins})

    def before_predict(self) -> None:
        """``medcl predict`` writes files: add a :class:`PredictionWriter` unless the config has one."""
        from framework.callbacks import PredictionWriter

        if not any(isinstance(c, PredictionWriter) for c in self.trainer.callbacks):
            self.trainer.callbacks.append(PredictionWriter())


def run_cli(args: Optional[List[str]] = None, run: bool = True, model_class: type = MedCLModule, cli_class: type = MedCLCLI) -> MedCLCLI:
    """Run the MedCL CLI in-process and return it (its ``trainer``, ``model``, ``datamodule``).

    Args:
        args: command-line arguments (``["fit", "--config", "experiments/quickstart.yaml"]``);
            ``None`` reads ``sys.argv``.
        run: run the subcommand; ``False`` only instantiates the objects (then ``args`` has no subcommand).
        model_class: the base class of ``model`` (``medcl pretrain`` passes its own).
        cli_class: :class:`MedCLCLI` or a subclass.
    """
    # Offline-first: W&B writes locally unless the user opts in with WANDB_MODE=online (patient
    # data must not leave the machine by accident, whatever a config's `offline:` says).
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    # the run folder is MedCL's own (framework/run_folder.py): a new one is empty but for its lock, a
    # continued one keeps its metrics.csv (keep_csv_history), so Lightning's warning does not apply
    warnings.filterwarnings("ignore", message=r".*exists and is not empty\. Previous log files.*")
    quiet_known_noise()
    # architectures registered by an earlier command of this process belong to its checkpoint only
    forget_checkpoint_architectures()
    return cli_class(
        model_class,
        pl.LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        # never replaces a run's config.yaml; W&B gets the whole resolved config (framework/config_record.py)
        save_config_callback=RecordConfig,
        save_config_kwargs={"overwrite": True},
        # Paradigms build their own AdamW with one named parameter group per head, so that groups
        # can be added as the model grows and line up again on resume.
        auto_configure_optimizers=False,
        # raise instead of printing the usage and exiting, so a typo gets one line (see error_line)
        parser_kwargs={"exit_on_error": False, **{sub: {"exit_on_error": False} for sub in ("fit", "validate", "test", "predict")}},
        args=args,
        run=run,
    )


def _finish(folders: Optional[RunFolders], failed: bool) -> None:
    """End a command: release its run folder; after a failure remove what it created (never a
    checkpoint, never another run's output) and say so."""
    if folders is None:
        return
    try:  # one command, one W&B run: close it (a later command in this process opens its own)
        import wandb

        if wandb.run is not None:
            wandb.finish(exit_code=1 if failed else 0)
    except Exception:  # pragma: no cover - W&B missing or already closed
        pass
    folders.end_record("failed" if failed else "finished")
    if not failed:
        folders.release()
        return
    removed = folders.remove_partial()
    if removed:
        print(f"medcl: the run failed; removed its partial output {[str(p) for p in removed]} (no checkpoint in it)", file=sys.stderr)


def main() -> None:
    """Entry point of the ``medcl`` console script (see :func:`one_line_errors`)."""
    # its own W&B service: one inherited from a parent process (WANDB_SERVICE) still holds the run id of a
    # sibling that was killed, and a resume of that run would be refused ("run ID ... is in use")
    os.environ.pop("WANDB_SERVICE", None)
    with one_line_errors("medcl"):
        check_class_paths(sys.argv[1:])
        if sys.argv[1:2] == ["pretrain"]:  # contrastive image-text pretraining (framework/pretraining/cli.py)
            from framework.pretraining.cli import run_pretrain

            run_pretrain(sys.argv[2:])
        else:
            run_cli()


if __name__ == "__main__":  # pragma: no cover
    main()
