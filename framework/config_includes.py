"""``config: <file>`` as the first key of an experiment: that file's settings first, this file's on top.

jsonargparse (``medcl``'s parser) reads a ``config`` key inside a config file where it stands,
then the keys after it, so an experiment can start from the shared trainer settings and change
single ones with dotted keys::

    config: ../trainer/continual.yaml      # CPU, logging every 10 steps, CSV + W&B loggers, ...
    trainer.max_epochs: 12
    trainer.default_root_dir: runs/strategies/der

Two ways this loses settings without a word, which MedCL refuses before parsing
(:func:`check_config_includes`):

* a key written *above* ``config:`` is overwritten by the file;
* a group written as a mapping or a file *after* it (``trainer: {max_epochs: 12}``) replaces the
  whole group the file set (its loggers, its accelerator): write ``trainer.max_epochs: 12``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, List, Optional, Set

import yaml

__all__ = ["config_files", "included_file", "groups_set_by", "check_config_includes"]

#: the key that names a config file inside a config file (LightningCLI's ``--config``)
INCLUDE_KEY = "config"


def config_files(args: List[str]) -> Iterator[Path]:
    """The ``--config`` / ``-c`` files named on a command line, in order."""
    for i, arg in enumerate(args):
        if arg in ("--config", "-c") and i + 1 < len(args):
            yield Path(args[i + 1])
        elif arg.startswith("--config="):
            yield Path(arg.split("=", 1)[1])


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None  # the CLI's own parser reports a missing or malformed file


def included_file(tree: Any, path: Path) -> Optional[Path]:
    """The file a config read from ``path`` names under ``config:`` (relative to ``path``), if any."""
    value = tree.get(INCLUDE_KEY) if isinstance(tree, dict) else None
    if not isinstance(value, str):
        return None
    return Path(value) if Path(value).is_absolute() else path.parent / value


def groups_set_by(path: Path, _seen: Optional[Set[Path]] = None) -> Set[str]:
    """Top-level groups (``trainer``, ``data``, ...) that the file at ``path`` or a file it includes sets."""
    seen = set() if _seen is None else _seen
    path = path.resolve()
    if path in seen:
        return set()
    seen.add(path)
    tree = _read(path)
    if not isinstance(tree, dict):
        return set()
    groups = {str(key).split(".", 1)[0] for key in tree if key != INCLUDE_KEY}
    inner = included_file(tree, path)
    return groups | (groups_set_by(inner, seen) if inner is not None and inner.is_file() else set())


def _is_group_value(value: Any) -> bool:
    return isinstance(value, dict) or (isinstance(value, str) and value.endswith((".yaml", ".yml")))


def _check_file(path: Path, seen: Set[Path]) -> None:
    path = path.resolve()
    if path in seen or not path.is_file():
        return
    seen.add(path)
    tree = _read(path)
    inner = included_file(tree, path)
    if inner is None:
        return
    keys = list(tree)
    if keys[0] != INCLUDE_KEY:
        raise ValueError(
            f"{path}: `{INCLUDE_KEY}: {tree[INCLUDE_KEY]}` must be the first key: the parser reads {inner.name} where the key "
            f"stands, so it would overwrite {', '.join(map(str, keys[: keys.index(INCLUDE_KEY)]))} written above it"
        )
    if not inner.is_file():
        raise ValueError(f"{path}: `{INCLUDE_KEY}:` names {tree[INCLUDE_KEY]!r}, expected a YAML file relative to {path.parent}, found no file {inner}")
    shared = groups_set_by(inner)
    for key, value in tree.items():
        if key in shared and _is_group_value(value):
            raise ValueError(
                f"{path}: `{key}:` written as a {'file' if isinstance(value, str) else 'mapping'} after `{INCLUDE_KEY}: "
                f"{tree[INCLUDE_KEY]}` replaces every {key} setting that file gives (the parser does not merge them); "
                f"change single settings with dotted keys instead, e.g. `{key}.<name>: <value>` (docs/configs.md)"
            )
    _check_file(inner, seen)


def check_config_includes(args: List[str]) -> None:
    """Refuse a ``--config`` file (or a file it includes) that would silently drop included settings.

    Raises:
        ValueError: naming the file and the key, for ``config:`` not written first, a missing
            included file, or a group that replaces the included one.
    """
    seen: Set[Path] = set()
    for path in config_files(args):
        _check_file(path, seen)
