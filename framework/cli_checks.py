"""Checks the ``medcl`` CLI runs before it builds anything: the ``class_path`` classes of the
``--config`` files import (:func:`check_class_paths`), and a ``--ckpt_path`` checkpoint holds the
model the configuration builds (:func:`check_ckpt_model`)."""
from __future__ import annotations

import importlib
import inspect
from pathlib import Path
from typing import Any, Dict, List

import pytorch_lightning as pl
import yaml

from framework.backbone.architecture import register_checkpoint_architecture
from framework.config_includes import config_files, included_file
from framework.core.checkpoints import load_checkpoint
from framework.paradigms.base import hparam_differences
from framework.resume_check import resume_differences, signature_defaults

__all__ = ["check_class_paths", "check_ckpt_model", "plain_args", "parameters"]


def check_ckpt_model(ckpt_path: str, model: Any, subcommand: str = "test") -> None:
    """Refuse a ``--ckpt_path`` whose model differs from the configuration's ``model`` section.

    LightningCLI would copy the checkpoint's hyper-parameters over the user's ``model`` section,
    silently swapping the paradigm and backbone; MedCL keeps the user's configuration and refuses
    loudly when the checkpoint's model cannot be what the configuration builds.

    Raises:
        ValueError: naming the checkpoint, the differing fields and the two ways out; or an
            unreadable checkpoint (see :func:`framework.core.checkpoints.load_checkpoint`).
        FileNotFoundError: if the checkpoint file does not exist.
    """
    checkpoint = load_checkpoint(ckpt_path, "--ckpt_path", mmap=True)
    # the model is built from the architecture the checkpoint stores (self-contained checkpoints)
    register_checkpoint_architecture(checkpoint, f"--ckpt_path {ckpt_path}")
    stored = dict(checkpoint.get("hyper_parameters", {}))
    wanted = plain_args(model)
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
        accepted = set(parameters(cls))
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
    trainer_args = set(parameters(pl.Trainer))
    files = list(config_files(args))
    while files:
        config = files.pop(0).resolve()
        tree = _load_yaml(config, seen)
        if not isinstance(tree, dict):
            continue
        inner = included_file(tree, config)
        if inner is not None:  # `config: <file>`: that file's classes too (framework/config_includes.py)
            files.append(inner)
        for key, value in tree.items():
            group, _, name = str(key).partition(".")  # `trainer.callbacks: [...]` sets one trainer argument
            if group in _CLASS_KEYS and not name:
                _check_node(value, f"{config}: {key}", config.parent, seen)
            elif group == "trainer" and name in trainer_args:
                _check_node(value, f"{config}: {key}", config.parent, seen)
            elif group == "trainer" and not name and isinstance(value, dict):
                for arg, item in value.items():
                    if arg in trainer_args:
                        _check_node(item, f"{config}: trainer.{arg}", config.parent, seen)


def _import(class_path: str) -> type:
    module_name, _, attr = class_path.rpartition(".")
    return getattr(importlib.import_module(module_name), attr)


def plain_args(model: Any) -> Dict[str, Any]:
    """The ``init_args`` of a parsed ``class_path`` spec, as a plain dict."""
    args = getattr(model, "init_args", None)
    if args is None:
        return {}
    return args.as_dict() if hasattr(args, "as_dict") else dict(vars(args))


def parameters(cls: type) -> List[str]:
    """Names of the ``__init__`` parameters of ``cls`` and its bases (``*args``/``**kwargs`` left out)."""
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
