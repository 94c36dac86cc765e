"""Run-folder placeholders in experiment files: ``${run_dir}``, ``${run_parent}``, ``${run_name}``, ``${study}``.

A shared logger file (``experiments/logger/csv.yaml``) cannot know the run folder of the experiment
that names it, and jsonargparse (``medcl``'s parser) has no interpolation unless OmegaConf is
installed.  So MedCL fills these four names itself, from ``trainer.default_root_dir``, before
anything is built (``MedCLCLI.before_instantiate_classes``):

==================  =====================================  ===========================
placeholder         value                                  ``runs/strategies/der``
==================  =====================================  ===========================
``${run_dir}``      ``trainer.default_root_dir``           ``runs/strategies/der``
``${run_parent}``   its parent folder                      ``runs/strategies``
``${run_name}``     its last part                          ``der``
``${study}``        the parent folder's last part          ``strategies``
==================  =====================================  ===========================

Any other ``${...}`` is refused (a folder literally named ``${x}`` would be a silent wrong result).
``--print_config`` shows the placeholders unfilled; the ``config.yaml`` saved in the run folder
shows the values used.
"""
from __future__ import annotations

import argparse
import re
from collections import deque
from pathlib import PurePosixPath
from typing import Any, Dict, List, Optional

__all__ = ["PLACEHOLDERS", "placeholder_values", "fill_placeholders"]

#: the names MedCL fills, and where each value comes from
PLACEHOLDERS = {
    "run_dir": "trainer.default_root_dir",
    "run_parent": "the parent folder of trainer.default_root_dir",
    "run_name": "the last part of trainer.default_root_dir",
    "study": "the last part of the parent folder of trainer.default_root_dir",
}
_PATTERN = re.compile(r"\$\{([^}]*)\}")


def placeholder_values(run_dir: Any) -> Dict[str, str]:
    """The value of every placeholder for the run folder ``run_dir`` (a path, as the config writes it).

    Raises:
        ValueError: if ``run_dir`` is empty or has no last part (``/``, ``.``).
    """
    text = str(run_dir).rstrip("/")
    path = PurePosixPath(text)
    if not text or not path.name or path.name in (".", ".."):
        raise ValueError(f"trainer.default_root_dir: expected a run folder such as runs/<study>/<name>, found {str(run_dir)!r}")
    parent = path.parent
    return {"run_dir": str(path), "run_parent": str(parent), "run_name": path.name, "study": parent.name or str(parent)}


def _items(node: Any) -> list:
    if isinstance(node, dict):
        return list(node.items())
    if isinstance(node, list):
        return list(enumerate(node))
    if isinstance(node, argparse.Namespace):  # jsonargparse's Namespace: one attribute per key, nested ones hold Namespaces
        return list(vars(node).items())
    return []


def _set(node: Any, key: Any, value: str) -> None:
    if isinstance(node, argparse.Namespace):
        setattr(node, key, value)
    else:
        node[key] = value


def fill_placeholders(config: Any, run_dir: Optional[Any], where: str = "") -> List[str]:
    """Replace the placeholders in every string of ``config`` (nested mappings, lists, namespaces) in place.

    Args:
        config: a parsed config (a jsonargparse Namespace or plain dicts and lists).
        run_dir: ``trainer.default_root_dir``; may be None when no string uses a placeholder.
        where: the dotted name of ``config``, for messages.

    Returns:
        the dotted names of the fields that held a placeholder.

    Raises:
        ValueError: naming the field, for an unknown placeholder, or for a placeholder when
            ``trainer.default_root_dir`` is not set.
    """
    filled: List[str] = []
    values: Optional[Dict[str, str]] = None
    queue = deque([(config, where)])  # breadth-first, in the config's own order: the first bad field is reported
    while queue:
        node, name = queue.popleft()
        for key, value in _items(node):
            field = f"{name}[{key}]" if isinstance(key, int) else (f"{name}.{key}" if name else str(key))
            if isinstance(value, str):
                names = _PATTERN.findall(value)
                if not names:
                    continue
                unknown = [n for n in names if n not in PLACEHOLDERS]
                if unknown:
                    raise ValueError(
                        f"{field}: unknown placeholder ${{{unknown[0]}}} in {value!r}; MedCL fills only "
                        f"{', '.join('${' + n + '}' for n in PLACEHOLDERS)} (from trainer.default_root_dir; docs/configs.md)"
                    )
                if values is None:
                    if run_dir in (None, ""):
                        raise ValueError(
                            f"{field}: {value!r} uses ${{{names[0]}}}, which MedCL fills from trainer.default_root_dir, "
                            f"but trainer.default_root_dir is not set; set it to the run folder (runs/<study>/<name>)"
                        )
                    values = placeholder_values(run_dir)
                _set(node, key, _PATTERN.sub(lambda m: values[m.group(1)], value))
                filled.append(field)
            elif not isinstance(value, (int, float, bool, bytes)) and value is not None:
                queue.append((value, field))
    return filled
