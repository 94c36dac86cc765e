"""What ``--ckpt_path`` may and may not change.

``medcl fit --ckpt_path`` continues a run: a changed ``lr`` or ``epochs_per_experience`` would
train the rest of the run under another schedule and mix two runs in one result (the optimizer
keeps its stored groups at the old rate while new groups take the new one; experience 0 is
re-scored under a mixed schedule).  ``test``/``validate``/``predict`` only need the same model
(:data:`~framework.paradigms.base.MODEL_DEFINING_HPARAMS`).
"""
from __future__ import annotations

import inspect
from typing import Any, Dict, List, Mapping

from framework.backbone.custom import comparable_backbone

__all__ = ["RESUME_MAY_CHANGE", "resume_differences", "signature_defaults"]

#: model arguments a resumed run may change: where a file was read from, never what is computed
#: (``pretrained`` and ``init_from`` are read only when a run starts; the checkpoint holds their result)
RESUME_MAY_CHANGE = ("pretrained", "init_from")


def signature_defaults(cls: type) -> Dict[str, Any]:
    """Constructor defaults of ``cls`` and its bases (for checkpoints written before an argument existed)."""
    defaults: Dict[str, Any] = {}
    for klass in reversed(getattr(cls, "__mro__", ())):
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        try:
            parameters = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):  # pragma: no cover - builtins
            continue
        defaults.update({p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty})
    return defaults


def _plain(value: Any) -> Any:
    as_dict = getattr(value, "as_dict", None)
    if callable(as_dict):
        value = as_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def resume_differences(stored: Mapping[str, Any], wanted: Mapping[str, Any], defaults: Mapping[str, Any]) -> List[str]:
    """``"field: checkpoint X, config Y"`` for every model argument a resumed run may not change.

    Args:
        stored: the checkpoint's ``hyper_parameters``.
        wanted: the configuration's model arguments.
        defaults: the paradigm's constructor defaults (an argument a checkpoint lacks had its default).
    """
    out = []
    for key in sorted(set(stored) | set(wanted)):
        if key.startswith("_") or key in RESUME_MAY_CHANGE:
            continue
        a, b = _plain(stored.get(key, defaults.get(key))), _plain(wanted.get(key, defaults.get(key)))
        if key == "backbone":  # a custom tower's init_args: absent = empty
            a, b = comparable_backbone(a), comparable_backbone(b)
        if a != b and not (isinstance(a, (int, float)) and isinstance(b, (int, float)) and float(a) == float(b)):
            out.append(f"{key}: checkpoint {a!r}, config {b!r}")
    return out
