"""Task routing: the model names the image source of an image (and so its tasks), or says "unknown".

``model.init_args.router: {kind: gaussian}`` (or ``prototypes``, ``learned``) gives the model a router
(:class:`TaskRouter`) that learns every image source at the end of the experience that trains it
(:class:`RouterFitting`), calibrates its unknown threshold on validation data, and is stored in
checkpoints.  Evaluation without task labels: :mod:`framework.metrics.task_agnostic`.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

from torch import nn

from framework.routing.base import UNKNOWN, Routes, TaskRouter
from framework.routing.gaussian import GaussianRouter
from framework.routing.learned import LearnedRouter
from framework.routing.prototypes import PrototypeRouter

__all__ = ["TaskRouter", "Routes", "UNKNOWN", "GaussianRouter", "PrototypeRouter", "LearnedRouter", "ROUTER_KINDS", "build_router", "check_router_config"]

#: router kind -> class
ROUTER_KINDS = {"gaussian": GaussianRouter, "prototypes": PrototypeRouter, "learned": LearnedRouter}


def check_router_config(config: Optional[Mapping[str, Any]], owner: str) -> Optional[Dict[str, Any]]:
    """``None``, or the router options as a dict with a known ``kind``.

    Raises:
        ValueError: naming ``owner``, for a value that is not a mapping or an unknown kind.
    """
    if config is None:
        return None
    if not isinstance(config, Mapping) or config.get("kind") not in ROUTER_KINDS:
        found = config.get("kind") if isinstance(config, Mapping) else config
        raise ValueError(f"{owner}: router expected null or a mapping with kind one of {list(ROUTER_KINDS)} (and that kind's options), found {found!r}")
    return dict(config)


def build_router(config: Mapping[str, Any], backbone: nn.Module) -> TaskRouter:
    """The router of ``config`` (``{kind: ..., <options>}``) over a frozen copy of ``backbone``'s image tower.

    Raises:
        ValueError: for an unknown kind or option.
    """
    options = dict(config)
    cls = ROUTER_KINDS[options.pop("kind")]
    try:
        return cls(backbone, **options)
    except TypeError as err:
        raise ValueError(f"router kind {config['kind']!r}: {err}") from None
