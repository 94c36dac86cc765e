"""Where runs are: the layout of a run folder and what a parsed ``trainer`` config says about it.

Which loggers and checkpoint callbacks the config names and where they write (read from the parsed
namespace, before anything is instantiated), which run folder a checkpoint belongs to, the newest
``last*.ckpt`` of earlier runs, the file name of a run's saved config and keeping ``metrics.csv``
of a continued run.  :mod:`framework.run_folder` claims, locks and cleans up the folders and
re-exports the public names.
"""
from __future__ import annotations

import importlib
import os
import re
from pathlib import Path
from typing import Any, List, Optional, Tuple

__all__ = [
    "RUN_RECORD", "LOCK_FILE", "VERSION_FOLDER", "VERSIONED_LOGGERS", "WANDB_LOGGERS", "CHECKPOINT_CALLBACKS", "class_of", "is_a",
    "config_items", "config_get", "loggers_of", "logger_root", "run_folder_of_checkpoint", "find_last_in_config",
    "keep_csv_history", "config_file_name", "newer_checkpoints", "holds_checkpoint",
]

#: file in every run folder: the W&B run id, the command, when it started
RUN_RECORD = "medcl_run.json"
#: held by the process that writes a run folder
LOCK_FILE = ".medcl.lock"
#: the name of a versioned run folder (``version_<N>``)
VERSION_FOLDER = re.compile(r"version_(\d+)$")



def class_of(class_path: Any) -> Optional[type]:
    """The class a config's ``class_path`` names, or ``None`` (left to the parser to report)."""
    if not isinstance(class_path, str):
        return None
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None  # reported by the parser


def is_a(class_path: Any, *bases: str) -> bool:
    """Whether ``class_path`` names a subclass of one of ``bases`` (dotted paths)."""
    cls = class_of(class_path)
    if cls is None:
        return False
    for base in bases:
        module, _, name = base.rpartition(".")
        try:
            if issubclass(cls, getattr(importlib.import_module(module), name)):
                return True
        except (ImportError, AttributeError):  # pragma: no cover - optional logger packages
            continue
    return False


VERSIONED_LOGGERS = ("pytorch_lightning.loggers.CSVLogger", "pytorch_lightning.loggers.TensorBoardLogger")
WANDB_LOGGERS = ("pytorch_lightning.loggers.WandbLogger",)
CHECKPOINT_CALLBACKS = ("pytorch_lightning.callbacks.ModelCheckpoint",)


def config_items(value: Any) -> List[Any]:
    """A config entry that may be one item, a list or nothing, as a list."""
    if value is None or isinstance(value, bool):
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def config_get(namespace: Any, key: str, default: Any = None) -> Any:
    """``namespace[key]`` of a parsed namespace or mapping (``default`` if absent or ``namespace`` is None)."""
    if namespace is None:
        return default
    getter = getattr(namespace, "get", None)
    return getter(key, default) if callable(getter) else getattr(namespace, key, default)


def loggers_of(trainer: Any, bases: Tuple[str, ...]) -> List[Any]:
    """The ``trainer`` config's loggers whose class is one of ``bases``."""
    return [entry for entry in config_items(config_get(trainer, "logger")) if is_a(config_get(entry, "class_path"), *bases)]


def logger_root(trainer: Any, logger: Any) -> Path:
    """``<save_dir>/<name>``, where a versioned logger of the ``trainer`` config puts its version folders."""
    args = config_get(logger, "init_args")
    save_dir = config_get(args, "save_dir") or config_get(trainer, "default_root_dir") or os.getcwd()
    name = config_get(args, "name", "lightning_logs")
    return Path(save_dir) / name if name else Path(save_dir)


def run_folder_of_checkpoint(ckpt_path: Any) -> Optional[Path]:
    """The run folder a checkpoint was written in (``<run>/checkpoints/<file>.ckpt``), or ``None``
    when the file does not sit in a run folder (a copied or stage checkpoint)."""
    if not ckpt_path or "://" in str(ckpt_path):
        return None
    path = Path(ckpt_path).absolute()
    if path.parent.name != "checkpoints":
        return None
    run = path.parent.parent
    return run if (run / RUN_RECORD).is_file() or VERSION_FOLDER.match(run.name) else None


def find_last_in_config(trainer: Any) -> Tuple[Optional[Path], List[str]]:
    """The most recently written ``last*.ckpt`` of the earlier runs of a parsed ``trainer`` config,
    and the folders searched: a checkpoint callback's ``dirpath`` if one is set, else
    ``<save_dir>/<name>/<any version>/checkpoints`` of the first versioned logger, else
    ``<default_root_dir>/[<any version>/]checkpoints`` (where Lightning's ``ModelCheckpoint`` writes)."""
    patterns: List[Tuple[Path, str]] = []
    for callback in config_items(config_get(trainer, "callbacks")):
        dirpath = config_get(config_get(callback, "init_args"), "dirpath")
        if dirpath and is_a(config_get(callback, "class_path"), *CHECKPOINT_CALLBACKS):
            patterns.append((Path(dirpath), "last*.ckpt"))
    if not patterns:
        versioned = loggers_of(trainer, VERSIONED_LOGGERS)
        if versioned:
            patterns.append((logger_root(trainer, versioned[0]), "*/checkpoints/last*.ckpt"))
        else:
            root = Path(config_get(trainer, "default_root_dir") or os.getcwd())
            patterns += [(root / "checkpoints", "last*.ckpt"), (root, "version_*/checkpoints/last*.ckpt")]
    found = [path for folder, pattern in patterns for path in folder.glob(pattern) if path.is_file()]
    searched = [str(folder / pattern) for folder, pattern in patterns]
    return (max(found, key=lambda p: p.stat().st_mtime) if found else None), searched


def keep_csv_history(trainer: Any) -> None:
    """Keep the ``metrics.csv`` of a continued run folder: Lightning's CSV writer deletes an existing
    one when it starts, so it is moved aside while the writer starts and put back (the writer then
    appends, and rewrites the header if new columns come)."""
    import csv
    import warnings

    from pytorch_lightning.loggers import CSVLogger

    for logger in getattr(trainer, "loggers", []):
        if not isinstance(logger, CSVLogger) or not getattr(trainer, "is_global_zero", True):
            continue
        metrics = Path(logger.log_dir) / "metrics.csv"
        aside = metrics.with_name(".metrics.csv.kept")
        if metrics.is_file():
            os.replace(metrics, aside)
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*exists and is not empty.*")
                writer = logger.experiment  # starts the writer (public property)
        finally:
            if aside.is_file():
                os.replace(aside, metrics)
        if metrics.is_file():  # the writer appends under the file's header, widened when new columns come
            with open(metrics, newline="") as fh:
                writer.metrics_keys = list(next(csv.reader(fh), []))


def config_file_name(folder: Path, subcommand: str, default: str = "config.yaml") -> str:
    """``config.yaml`` for a new run folder; ``config.<subcommand>[-<k>].yaml`` when the folder
    already holds one (a resumed, tested or predicted run keeps the config it started with)."""
    if not (Path(folder) / default).exists():
        return default
    stem, suffix = default.rsplit(".", 1)
    k = 1
    while (Path(folder) / f"{stem}.{subcommand}-{k}.{suffix}").exists():
        k += 1
    return f"{stem}.{subcommand}-{k}.{suffix}"


def newer_checkpoints(ckpt: Path) -> List[Path]:
    """The checkpoints beside ``ckpt`` written after it (newest first): the run went on past it."""
    try:
        mtime = ckpt.stat().st_mtime
    except OSError:
        return []
    newer = [p for p in ckpt.parent.glob("*.ckpt") if p != ckpt and p.stat().st_mtime > mtime]
    return sorted(newer, key=lambda p: -p.stat().st_mtime)


def holds_checkpoint(path: Path, since: Optional[float] = None) -> bool:
    """Whether ``path`` holds a checkpoint (written at or after ``since``, a ``time.time()``, if given)."""
    return path.is_dir() and any(p.suffix == ".ckpt" and (since is None or p.stat().st_mtime >= since) for p in path.rglob("*"))
