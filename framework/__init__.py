"""MedCL: a CLIP-based medical foundation model that keeps learning new domains without forgetting.

Importing ``framework`` (or its neutral core, :mod:`framework.core`) loads no model library: the
names below are imported on first use, so ``import framework.core.specs`` stays fast and free of open_clip.
"""
from importlib import import_module
from typing import Any

__version__ = "0.1.0"
__all__ = ["CLIPBackbone", "MedCLModel", "TaskSpec", "TASK_KINDS", "__version__"]

_LAZY = {"CLIPBackbone": "framework.backbone", "MedCLModel": "framework.model", "TaskSpec": "framework.core.specs", "TASK_KINDS": "framework.core.specs"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'framework' has no attribute {name!r}")
