"""``medcl fit|validate|test|predict --config experiments/<name>.yaml`` — a LightningCLI."""
from __future__ import annotations

import contextlib
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Iterator, List, Optional, Tuple

import pytorch_lightning as pl
import torch
import yaml
from pytorch_lightning.cli import LightningCLI

from framework.paradigms import MedCLModule
from framework.paradigms.base import hparam_differences

__all__ = ["MedCLCLI", "main", "run_cli", "check_class_paths", "one_line_errors"]


class MedCLCLI(LightningCLI):
    """LightningCLI with MedCL defaults: any paradigm as ``model``, any data module as ``data``."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.set_defaults({"seed_everything": 0})

    def _parse_ckpt_path(self) -> None:
        """Refuse a ``--ckpt_path`` whose model differs from the configuration.

        LightningCLI would copy the checkpoint's hyper-parameters over the user's ``model`` section,
        silently swapping the paradigm and backbone.  MedCL keeps the user's configuration and
        refuses loudly when the checkpoint's model cannot be what the configuration builds.

        Raises:
            ValueError: naming the checkpoint, the differing fields and the two ways out.
        """
        # LightningCLI has no public hook for this step; it calls this method before instantiating classes.
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or not Path(ckpt_path).is_file():
            return
        stored = dict(torch.load(ckpt_path, weights_only=True, map_location="cpu").get("hyper_parameters", {}))
        model = self.config[subcommand]["model"]
        wanted = dict(vars(model.init_args)) if getattr(model, "init_args", None) is not None else {}
        problems = hparam_differences(stored, wanted)
        stored_class = stored.get("_class_path")
        if stored_class and stored_class != model.class_path:
            problems.insert(0, f"paradigm: checkpoint {stored_class}, config {model.class_path}")
        if problems:
            raise ValueError(
                f"--ckpt_path {ckpt_path}: the checkpoint's model differs from the configuration ({'; '.join(problems)}). "
                f"--ckpt_path resumes or tests the same run: use the configuration it was written with. To start a new run "
                f"from this trained model, use --model.init_args.init_from {ckpt_path} instead"
            )

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


def _config_files(args: List[str]) -> Iterator[Path]:
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            yield Path(args[i + 1])
        elif arg.startswith("--config="):
            yield Path(arg.split("=", 1)[1])


def _class_paths(node: Any, where: str, base: Path, seen: set) -> Iterator[Tuple[str, str]]:
    """``(class_path, location)`` pairs of a parsed YAML tree, following nested YAML file references."""
    if isinstance(node, dict):
        for key, value in node.items():
            here = f"{where}.{key}" if where else str(key)
            if key == "class_path" and isinstance(value, str):
                yield value, where or "(top level)"
            else:
                yield from _class_paths(value, here, base, seen)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _class_paths(value, f"{where}[{i}]", base, seen)
    elif isinstance(node, str) and node.endswith((".yaml", ".yml")) and (base / node).is_file():
        yield from _yaml_class_paths(base / node, seen, prefix=where)


def _yaml_class_paths(path: Path, seen: set, prefix: str = "") -> Iterator[Tuple[str, str]]:
    path = path.resolve()
    if path in seen or not path.is_file():
        return
    seen.add(path)
    try:
        tree = yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return  # the CLI's own parser reports malformed YAML
    for class_path, where in _class_paths(tree, prefix, path.parent, seen):
        yield class_path, f"{path}: {where}"


def check_class_paths(args: List[str]) -> None:
    """Import every ``class_path`` of the ``--config`` files before the CLI parses them.

    jsonargparse reports an import failure deep inside a full usage dump; this names the class,
    where it is configured and how to make a user package importable.

    Raises:
        ValueError: for the first class that cannot be imported.
    """
    seen: set = set()
    for config in _config_files(args):
        for class_path, where in _yaml_class_paths(config, seen):
            module_name, _, attr = class_path.rpartition(".")
            try:
                module = importlib.import_module(module_name) if module_name else None
            except ImportError as err:
                raise ValueError(
                    f"class_path {class_path!r} ({where}) could not be imported: {err}. medcl imports classes the way Python "
                    f"does: install your package (`pip install -e /path/to/your_package`), or run medcl from the folder that "
                    f"contains it, or add that folder to PYTHONPATH"
                ) from None
            if module is not None and not hasattr(module, attr):
                names = sorted(n for n in dir(module) if not n.startswith("_"))
                raise ValueError(f"class_path {class_path!r} ({where}): module {module_name!r} has no {attr!r} (it has {names[:20]})")


def _root_cause(err: BaseException) -> BaseException:
    seen = set()
    while id(err) not in seen:
        seen.add(id(err))
        nxt = err.__cause__ or (None if err.__suppress_context__ else err.__context__)
        if nxt is None:
            break
        err = nxt
    return err


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Run a console script's body: configuration and data errors become one line naming the file
    or field (``MEDCL_TRACEBACK=1`` shows the traceback); the current folder is importable, as
    with ``python -m``, so a package next to the user's configs can be named by ``class_path``."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        yield
    except (ValueError, FileNotFoundError, KeyError) as err:
        if os.environ.get("MEDCL_TRACEBACK"):
            raise
        cause = _root_cause(err)
        message = cause.args[0] if isinstance(cause, KeyError) and cause.args else cause
        print(f"{prog}: error: {type(cause).__name__}: {message}\n(set MEDCL_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    """Entry point of the ``medcl`` console script (see :func:`one_line_errors`)."""
    with one_line_errors("medcl"):
        check_class_paths(sys.argv[1:])
        run_cli()


if __name__ == "__main__":  # pragma: no cover
    main()
