"""Read an experiment config as one plain dict, with the files it names inlined.

An experiment names shared pieces by path, as jsonargparse (``medcl``'s parser) allows: the shared
trainer settings it starts from (``config: ../trainer/continual.yaml``), a class value
(``data: ../streams/four_medmnist.yaml``), the whole ``trainer`` group, a ``trainer.logger``
or ``trainer.callbacks`` list, or one item of such a list (``- ../callbacks/evaluation.yaml``).  A
relative path is relative to the file that names it.  ``medcl`` reads those files itself; a script
that edits an experiment and writes it elsewhere (benchmarks, tests/helpers.py ``shrink_config``)
reads it with :func:`load_config`, so that the copy still names nothing relative to the original.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, Tuple

import yaml

__all__ = ["load_config", "inline"]

#: top-level keys whose value may be a file (a class spec, or the trainer group)
_TOP = ("model", "data", "trainer")
#: ``trainer`` keys whose value, or whose list items, may be files (class specs)
_TRAINER_LISTS = ("logger", "callbacks", "plugins")


def _is_file_ref(value: Any) -> bool:
    return isinstance(value, str) and value.endswith((".yaml", ".yml"))


def _read(ref: str, base: Path, where: str) -> Tuple[Any, Path]:
    path = (base / ref) if not Path(ref).is_absolute() else Path(ref)
    if not path.is_file():
        raise FileNotFoundError(f"{where}: expected a YAML file {ref!r} relative to {base}, found no file {path}")
    try:
        return yaml.safe_load(path.read_text()), path.parent
    except yaml.YAMLError as err:
        raise ValueError(f"{where}: {path} is not valid YAML: {err}") from None


def _holds_specs(value: Any) -> bool:
    return (isinstance(value, dict) and "class_path" in value) or (isinstance(value, list) and any(_holds_specs(v) for v in value))


def _inline_specs(value: Any, base: Path, where: str) -> Any:
    """A class spec, a list of them, or a file holding either (items of a list file are relative to it);
    inside a spec's ``init_args``, a value (or list item, or mapping value) that names a YAML file
    holding class specs is inlined too (``domains: [domains/bloodmnist_1000.yaml]``)."""
    if _is_file_ref(value):
        loaded, inner = _read(value, base, where)
        return _inline_specs(loaded, inner, f"{where} ({value})")
    if isinstance(value, list):
        return [_inline_specs(item, base, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict) and isinstance(value.get("init_args"), dict):
        value = dict(value)
        value["init_args"] = {k: _inline_arg(v, base, f"{where}.init_args.{k}") for k, v in value["init_args"].items()}
    return value


def _inline_arg(value: Any, base: Path, where: str) -> Any:
    """An ``init_args`` value: class specs (or files holding them) inlined, anything else as it is."""
    if _is_file_ref(value):
        path = (base / value) if not Path(value).is_absolute() else Path(value)
        if path.is_file() and _holds_specs(yaml.safe_load(path.read_text())):
            return _inline_specs(value, base, where)
        return value
    if isinstance(value, list):
        return [_inline_arg(item, base, f"{where}[{i}]") for i, item in enumerate(value)]
    if isinstance(value, dict):
        if "class_path" in value:
            return _inline_specs(value, base, where)
        return {k: _inline_arg(v, base, f"{where}.{k}") for k, v in value.items()}
    return value


def inline(config: Dict[str, Any], base: Path, where: str = "config") -> Dict[str, Any]:
    """``config`` (read from a file in folder ``base``) with every file it names inlined."""
    config = dict(config)
    for key in _TOP:
        if _is_file_ref(config.get(key)):
            config[key], inner = _read(config[key], base, f"{where}: {key}")
            if key == "trainer":  # the trainer file's own references are relative to it
                config[key] = inline({"trainer": config[key]}, inner, f"{where}: trainer ({inner})")["trainer"]
            else:  # a class spec: the files its init_args name are relative to it
                config[key] = _inline_specs(config[key], inner, f"{where}: {key}")
        elif isinstance(config.get(key), dict) and key != "trainer":
            config[key] = _inline_specs(config[key], base, f"{where}: {key}")
    trainer = config.get("trainer")
    if isinstance(trainer, dict):
        trainer = config["trainer"] = dict(trainer)
        for key in _TRAINER_LISTS:
            if key in trainer:
                trainer[key] = _inline_specs(trainer[key], base, f"{where}: trainer.{key}")
    return config


def _nested(key: str, value: Any) -> Dict[str, Any]:
    """``trainer.max_epochs: 3`` as ``{"trainer": {"max_epochs": 3}}``."""
    for part in reversed(key.split(".")[1:]):
        value = {part: value}
    return {key.split(".", 1)[0]: value}


def _merge(into: Dict[str, Any], update: Dict[str, Any]) -> None:
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict) and "class_path" not in value:
            into[key] = dict(into[key])
            _merge(into[key], value)
        else:
            into[key] = value


def load_config(path: Path) -> Dict[str, Any]:
    """The experiment at ``path`` as one dict: what ``medcl fit --config path`` reads, with no file names in it.

    ``config: <file>`` (the first key) is read first and the file's other keys go on top, a dotted
    key (``trainer.max_epochs: 3``) changing one setting, as ``medcl``'s parser does
    (framework/config_includes.py).  Run-folder placeholders (``${run_dir}``, ...) are left for
    ``medcl`` to fill (framework/config_placeholders.py).

    Raises:
        FileNotFoundError: naming the experiment, the field and the missing file.
        ValueError: if the experiment or a file it names is not a YAML mapping.
    """
    path = Path(path)
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a YAML mapping (model, data, trainer, ...), found {type(config).__name__}")
    result: Dict[str, Any] = {}
    if "config" in config:
        included = config.pop("config")
        _read(included, path.parent, f"{path}: config")  # refuses a missing file, naming it
        result = load_config(path.parent / included if not Path(included).is_absolute() else Path(included))
    result.update(inline({k: v for k, v in config.items() if "." not in str(k)}, path.parent, str(path)))
    for key, value in config.items():
        if "." in str(key):
            _merge(result, inline(_nested(str(key), value), path.parent, f"{path}: {key}"))
    return result
