"""The paradigm's ``backbone`` setting: an open_clip architecture name, or a custom tower as
``{class_path, init_args}`` (:mod:`framework.backbone.custom`): its validation, the form checkpoints
store for comparison, and importing a ``class_path``."""
from __future__ import annotations

import importlib
from typing import Any, Dict, Mapping, Union

__all__ = ["TOWER_KEYS", "check_backbone_value", "comparable_backbone", "import_class_path"]

#: keys of a custom backbone mapping (LightningCLI's class_path + init_args form)
TOWER_KEYS = ("class_path", "init_args")


def check_backbone_value(value: Any, owner: str) -> Union[str, Dict[str, Any]]:
    """Validate a paradigm's ``backbone``: an open_clip name, or ``{class_path, init_args}``.

    Returns:
        the name, or the mapping as ``{"class_path": str, "init_args": dict}``.

    Raises:
        ValueError: naming the field, what was expected and what was found.
    """
    if isinstance(value, str) and value:
        return value
    expected = "an open_clip architecture name or a mapping {class_path: pkg.module.Tower, init_args: {...}}"
    if not isinstance(value, Mapping):
        raise ValueError(f"{owner}: backbone expected {expected}, found {value!r}")
    unknown = sorted(set(value) - set(TOWER_KEYS))
    if unknown or not isinstance(value.get("class_path"), str) or not value["class_path"]:
        raise ValueError(f"{owner}: backbone expected {expected}, found {dict(value)!r}" + (f" (unknown keys {unknown})" if unknown else ""))
    init_args = value.get("init_args")
    if init_args is not None and not isinstance(init_args, Mapping):
        raise ValueError(f"{owner}: backbone.init_args expected a mapping of the tower's arguments, found {init_args!r}")
    return {"class_path": value["class_path"], "init_args": dict(init_args or {})}


def comparable_backbone(value: Any) -> Any:
    """A ``backbone`` value as the checkpoint stores it: a name as it is, a mapping as ``{class_path,
    init_args}`` with ``init_args`` a plain dict (absent = empty), for comparing a config with a checkpoint."""
    if not isinstance(value, Mapping):
        return value
    init_args = value.get("init_args")
    init_args = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
    return {**dict(value), "init_args": init_args}


def import_class_path(class_path: str, what: str = "backbone") -> type:
    """Import ``pkg.module.Name``.

    Raises:
        ValueError: naming ``class_path`` if the module cannot be imported or has no such name.
    """
    module_name, _, name = class_path.rpartition(".")
    if not module_name or not name:
        raise ValueError(f"{what}: class_path expected a dotted path pkg.module.Class, found {class_path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(
            f"{what}: class_path {class_path!r} could not be imported ({type(err).__name__}: {err}); install the package "
            f"that holds it (pip install -e ...) or add its folder to PYTHONPATH"
        ) from None
    if not hasattr(module, name):
        names = sorted(n for n in dir(module) if not n.startswith("_"))[:20]
        raise ValueError(f"{what}: class_path {class_path!r}: module {module_name!r} has no {name!r} (it has {names})")
    return getattr(module, name)
