"""Whether a LightningModule is attached to a Trainer, through Lightning's public ``trainer`` property."""
from __future__ import annotations

from typing import Any, Optional

__all__ = ["attached_trainer"]


def attached_trainer(module: Any) -> Optional[Any]:
    """The Trainer ``module`` is attached to, or ``None``: a LightningModule that has none, or an
    object without a ``trainer`` (Lightning's ``module.trainer`` raises ``RuntimeError`` when there
    is none; its ``_trainer`` attribute is private)."""
    try:
        return getattr(module, "trainer", None)
    except RuntimeError:
        return None
