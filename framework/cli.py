"""``medcl fit|validate|test|predict --config experiments/<name>.yaml`` — a LightningCLI (``medcl pretrain``: framework/pretraining/cli.py)."""
from __future__ import annotations

import contextlib
import difflib
import importlib
import inspect
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytorch_lightning as pl
import yaml
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.cli import LightningCLI
from pytorch_lightning.utilities import rank_zero_info

from framework.backbone.architecture import forget_checkpoint_architectures, register_checkpoint_architecture
from framework.core.checkpoints import AtomicCheckpointIO, load_checkpoint
from framework.config_record import RecordConfig
from framework.console import quiet_known_noise
from framework.paradigms import MedCLModule
from framework.paradigms.base import hparam_differences
from framework.resume_check import resume_differences, signature_defaults
from framework.run_folder import RunFolders, find_last_in_config, keep_csv_history

__all__ = ["MedCLCLI", "main", "run_cli", "check_class_paths", "one_line_errors", "error_line"]

#: ``--ckpt_path`` values Lightning resolves itself (``last`` is resolved by MedCL, see ``MedCLCLI.before_instantiate_classes``)
LIGHTNING_CKPT_KEYWORDS = ("last", "best", "hpc", "registry")


class MedCLCLI(LightningCLI):
    """LightningCLI with MedCL defaults: any paradigm as ``model``, any data module as ``data``."""

    def add_arguments_to_parser(self, parser) -> None:
        # Lightning's summary counts parameters before the heads grow and shows 0 FLOPs (framework/console.py)
        parser.set_defaults({"seed_everything": 0, "trainer.enable_model_summary": False})

    def _parse_ckpt_path(self) -> None:
        """Refuse a ``--ckpt_path`` whose model differs from the configuration.

        LightningCLI would copy the checkpoint's hyper-parameters over the user's ``model`` section,
        silently swapping the paradigm and backbone.  MedCL keeps the user's configuration and
        refuses loudly when the checkpoint's model cannot be what the configuration builds.
        ``--ckpt_path last`` is resolved (and checked) in :meth:`before_instantiate_classes`.

        Raises:
            ValueError: naming the checkpoint, the differing fields and the two ways out; or an
                unreadable checkpoint (see :func:`framework.core.checkpoints.load_checkpoint`).
            FileNotFoundError: if the checkpoint file does not exist.
        """
        # LightningCLI has no public hook for this step; it calls this method before instantiating classes.
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        ckpt_path = self.config[subcommand].get("ckpt_path")
        if not ckpt_path or ckpt_path in LIGHTNING_CKPT_KEYWORDS:
            return
        self._check_ckpt_model(ckpt_path, self.config[subcommand]["model"], subcommand)

    @staticmethod
    def _check_ckpt_model(ckpt_path: str, model: Any, subcommand: str = "test") -> None:
        checkpoint = load_checkpoint(ckpt_path, "--ckpt_path", mmap=True)
        # the model is built from the architecture the checkpoint stores (self-contained checkpoints)
        register_checkpoint_architecture(checkpoint, f"--ckpt_path {ckpt_path}")
        stored = dict(checkpoint.get("hyper_parameters", {}))
        wanted = _plain_args(model)
        native = ((checkpoint.get("medcl") or {}).get("architecture") or {}).get("model_cfg", {}).get("vision_cfg", {}).get("image_size")
        problems = hparam_differences(stored, wanted, native_size=native)
        stored_class = stored.get("_class_path")
        if stored_class and stored_class != model.class_path:
            problems.insert(0, f"paradigm: checkpoint {stored_class}, config {model.class_path}")
        if problems:
            raise ValueError(
                f"--ckpt_path {ckpt_path}: the checkpoint's model differs from the configuration ({'; '.join(problems)}). "
                f"--ckpt_path resumes or tests the same run: use the configuration it was written with. To start a new run "
                f"from this trained model, use --model.init_args.init_from {ckpt_path} instead"
            )
        if subcommand == "fit":
            changed = resume_differences(stored, wanted, signature_defaults(_import(model.class_path)))
            if changed:
                raise ValueError(
                    f"--ckpt_path {ckpt_path}: resuming would change what the run computes ({'; '.join(changed)}); a resumed run "
                    f"continues with the settings it started with. Resume with those values, or start a new run from this "
                    f"model with --model.init_args.init_from {ckpt_path}"
                )

    def before_instantiate_classes(self) -> None:
        """Resolve ``--ckpt_path last`` and settle the run folder (:mod:`framework.run_folder`) before
        anything is built: a new run claims its own folder, a checkpoint's command writes into the
        checkpoint's run folder and W&B run."""
        subcommand = self.subcommand
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if ckpt_path == "last":
            found, searched = find_last_in_config(config.get("trainer"))
            if found is None:
                raise ValueError(
                    f"--ckpt_path last: no last.ckpt in {', '.join(searched)} (expected a checkpoints/last.ckpt written by an earlier "
                    f"run of this config, with ModelCheckpoint(save_last=true)); pass the checkpoint's path instead"
                )
            rank_zero_info(f"medcl: --ckpt_path last -> {found}")
            self._check_ckpt_model(str(found), config["model"], subcommand)
            config["ckpt_path"] = ckpt_path = str(found)
        init_from = _plain_args(config["model"]).get("init_from")
        if init_from and Path(str(init_from)).is_file():  # a missing file is refused, naming it, when the model loads it
            register_checkpoint_architecture(str(init_from), f"init_from {str(init_from)!r}")
        self.run_folders = RunFolders(subcommand)
        _ACTIVE.append(self.run_folders)
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

    def _instantiate_trainer(self, config: Dict[str, Any], callbacks: List[pl.Callback]) -> pl.Trainer:
        """Every MedCL trainer writes checkpoints atomically and loads them safely (:class:`AtomicCheckpointIO`)."""
        plugins = config.get("plugins")
        plugins = [] if plugins is None else list(plugins) if isinstance(plugins, (list, tuple)) else [plugins]
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        config["plugins"] = plugins
        return super()._instantiate_trainer(config, callbacks)

    def _run_subcommand(self, subcommand: str) -> None:
        """Run the subcommand; if it fails, remove the output it started but never checkpointed."""
        if self.config[subcommand].get("ckpt_path") and isinstance(self.model, MedCLModule):
            self.model.expect_checkpoint_weights()  # no pretrained file is read: the checkpoint holds every weight
        try:
            super()._run_subcommand(subcommand)
        finally:
            _finish(self.run_folders if hasattr(self, "run_folders") else None, failed=sys.exc_info()[0] is not None)

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
    try:
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
    except BaseException:
        while _ACTIVE:  # failed before its trainer ran (building the data, the model or the trainer)
            _finish(_ACTIVE[-1], failed=True)
        raise


def _config_files(args: List[str]) -> Iterator[Path]:
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            yield Path(args[i + 1])
        elif arg.startswith("--config="):
            yield Path(arg.split("=", 1)[1])


#: top-level config keys whose values are classes (``model``, ``data``) or hold them (``trainer``)
_CLASS_KEYS = ("model", "data", "optimizer", "lr_scheduler")


def _load_yaml(path: Path, seen: set) -> Any:
    path = path.resolve()
    if path in seen or not path.is_file():
        return None
    seen.add(path)
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError:
        return None  # the CLI's own parser reports malformed YAML


def _check_node(node: Any, where: str, base: Path, seen: set) -> None:
    """Import the classes of a value at a key the parser accepts: a ``class_path`` spec (then its
    ``init_args`` at the class's own parameters), a list of them, or a YAML file naming one."""
    if isinstance(node, str) and node.endswith((".yaml", ".yml")) and (base / node).is_file():
        _check_node(_load_yaml(base / node, seen), f"{base / node}: {where}", (base / node).parent, seen)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_node(value, f"{where}[{i}]", base, seen)
    elif isinstance(node, dict) and isinstance(node.get("class_path"), str):
        cls = _import_class_path(node["class_path"], where)
        accepted = set(_parameters(cls))
        for key, value in (node.get("init_args") or {}).items() if isinstance(node.get("init_args"), dict) else ():
            if key in accepted:  # an unknown key is rejected by the parser: its value is never imported
                _check_node(value, f"{where}.init_args.{key}", base, seen)


def _import_class_path(class_path: str, where: str) -> type:
    module_name, _, attr = class_path.rpartition(".")
    try:
        module = importlib.import_module(module_name) if module_name else None
    except ImportError as err:
        raise ValueError(
            f"class_path {class_path!r} ({where}) could not be imported: {err}. medcl imports classes the way Python "
            f"does: install your package (`pip install -e /path/to/your_package`), or run medcl from the folder that "
            f"contains it, or add that folder to PYTHONPATH"
        ) from None
    if module is None or not hasattr(module, attr):
        names = sorted(n for n in dir(module) if not n.startswith("_")) if module is not None else []
        raise ValueError(f"class_path {class_path!r} ({where}): module {module_name!r} has no {attr!r} (it has {names[:20]})")
    return getattr(module, attr)


def check_class_paths(args: List[str]) -> None:
    """Import the ``class_path`` classes of the ``--config`` files before the CLI parses them.

    jsonargparse reports an import failure deep inside a full usage dump; this names the class,
    where it is configured and how to make a user package importable.  Only classes at keys the
    parser accepts are imported (``model``, ``data``, the trainer's arguments, and the arguments
    of those classes, recursively): a ``class_path`` under an unknown key (``notes: {class_path:
    mymod.X}``) is never imported, because the parser rejects that key before anything runs.

    Raises:
        ValueError: for the first class that cannot be imported.
    """
    seen: set = set()
    trainer_args = set(_parameters(pl.Trainer))
    for config in _config_files(args):
        tree = _load_yaml(config, seen)
        if not isinstance(tree, dict):
            continue
        base = config.resolve().parent
        for key in _CLASS_KEYS:
            if key in tree:
                _check_node(tree[key], f"{config.resolve()}: {key}", base, seen)
        trainer = tree.get("trainer")
        for key, value in trainer.items() if isinstance(trainer, dict) else ():
            if key in trainer_args:
                _check_node(value, f"{config.resolve()}: trainer.{key}", base, seen)


def _import(class_path: str) -> type:
    module_name, _, attr = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def _plain_args(model: Any) -> Dict[str, Any]:
    args = getattr(model, "init_args", None)
    if args is None:
        return {}
    return args.as_dict() if hasattr(args, "as_dict") else dict(vars(args))


#: run folders of the commands of this process that have not ended (cleaned up if a command fails
#: before its trainer runs, e.g. while the data module is built)
_ACTIVE: List[RunFolders] = []


def _finish(folders: Optional[RunFolders], failed: bool) -> None:
    """End a command: release its run folder; after a failure remove what it created (never a
    checkpoint, never another run's output) and say so."""
    if folders is None:
        return
    if folders in _ACTIVE:
        _ACTIVE.remove(folders)
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


#: packages that re-raise a user's error inside their own (jsonargparse: "Does not validate against any of the Union subtypes")
_WRAPPERS = ("jsonargparse", "pytorch_lightning", "lightning_fabric", "lightning")


def _raised_by_wrapper(err: BaseException) -> bool:
    tb = err.__traceback__
    if tb is None:
        return False
    while tb.tb_next is not None:
        tb = tb.tb_next
    parts = Path(tb.tb_frame.f_code.co_filename).parts
    return any(pkg in parts for pkg in _WRAPPERS)


def error_line(err: BaseException) -> str:
    """One line for an error: ``"<Type>: <message>"`` of the outermost error raised by MedCL's (or
    the user's) code, which names the file or field; not of its deepest cause (a network error
    under MedCL's download instructions), and not of a wrapper that jsonargparse or Lightning
    raised around it.

    A message that holds a formatted traceback (an error re-raised from a DataLoader worker) is
    reduced to its last line, the original error; other multi-line messages are joined.
    """
    outer = err
    while err.__cause__ is not None and (_raised_by_wrapper(err) or not str(err).strip()):
        err = err.__cause__
    text = err.args[0] if isinstance(err, KeyError) and err.args else err
    lines = [line.strip() for line in str(text).strip().splitlines() if line.strip()]
    if any(line.startswith(("Traceback (most recent call last)", "Original Traceback")) for line in lines):
        return lines[-1]
    line = f"{type(err).__name__}: {' '.join(lines)}" if lines else type(err).__name__
    return _field_of(outer, line) + _option_hint(outer, line)


def _field_of(outer: BaseException, line: str) -> str:
    """Name the config field of a jsonargparse type error that names none
    (``"Expected a <class 'str'>. Got value: 1"``), from the keys and class of its wrappers."""
    if "Parser key" in line or not re.search(r"Expected a .*Got value", line):
        return line
    text = _chain_text(outer)
    keys = list(dict.fromkeys(re.findall(r'Parser key "([\w.]+)"', text)))
    classes = re.findall(r"class_path '([\w.]+)'", text)
    if not keys:
        return line
    outer_keys = sorted(keys, key=lambda k: not k.startswith(("trainer", "model", "data")))  # "trainer.callbacks", then "filename"
    field = outer_keys[0] + (f" ({classes[0]})" if classes else "") + "".join(f".init_args.{k}" for k in outer_keys[1:])
    hint = ""
    found = re.search(r"Expected a <class 'str'>\. Got value: (-?[\d.]+)$", line)
    if found:
        hint = f"; YAML reads an unquoted number (such as 01) as the number {found.group(1)}: put the value in quotes"
    kind, _, message = line.partition(": ")
    return f"{kind}: field {field}: {message}{hint}"


def _chain_text(err: BaseException) -> str:
    parts, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        parts.append(str(err))
        err = err.__cause__ or err.__context__
    return "\n".join(parts)


def _parameters(cls: type) -> List[str]:
    names: List[str] = []
    for klass in getattr(cls, "__mro__", ()):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            names += [p for p in inspect.signature(init).parameters if p not in ("self", "args", "kwargs") and p not in names]
        except (TypeError, ValueError):  # pragma: no cover - builtins
            pass
    return names


def _option_hint(outer: BaseException, line: str) -> str:
    """``"; did you mean 'lr'?"`` for a misspelt config key (jsonargparse names the key, not the closest one)."""
    match = re.search(r"(?:option|arguments:) '?(?:--)?([\w.]+)'?", line, flags=re.IGNORECASE)
    if not match:
        return ""
    key = match.group(1)
    section, _, name = key.rpartition(".")
    candidates: List[str] = []
    if section.split(".")[0] == "trainer" or key.startswith("trainer."):
        candidates += _parameters(pl.Trainer)
    for class_path in re.findall(r"class_path '([\w.]+)'", _chain_text(outer)):
        module_name, _, attr = class_path.rpartition(".")
        try:
            candidates += _parameters(getattr(importlib.import_module(module_name), attr))
        except (ImportError, AttributeError):  # pragma: no cover - reported by check_class_paths
            continue
    close = difflib.get_close_matches(name, candidates, n=1)
    return f"; did you mean '{close[0]}'? (a misspelt key is an error, never a silent default)" if close else ""


@contextlib.contextmanager
def one_line_errors(prog: str) -> Iterator[None]:
    """Run a console script's body: any error becomes one line naming the file or field, with MedCL's
    own message (``MEDCL_TRACEBACK=1`` shows the traceback); the current folder is importable, as
    with ``python -m``, so a package next to the user's configs can be named by ``class_path``."""
    if os.getcwd() not in sys.path:  # last, so a file in the current folder cannot shadow an installed module
        sys.path.append(os.getcwd())
    try:
        yield
    except Exception as err:
        if os.environ.get("MEDCL_TRACEBACK"):
            raise
        print(f"{prog}: error: {error_line(err)}\n(set MEDCL_TRACEBACK=1 for the full traceback)", file=sys.stderr)
        sys.exit(1)


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
