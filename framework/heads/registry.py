"""Head registry: maps a task kind to the head class that serves it.

MedCL's kinds register here with ``@register_head("kind")``; so does a user's package for a kind of
its own (docs/extending.md), without editing MedCL: the kind then validates in
:class:`~framework.core.specs.TaskSpec` and builds its head.  Paradigm code never changes, because it
only talks to the :class:`~framework.heads.base.TaskHead` interface.  The registry object is
:data:`framework.core.registry.HEADS`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping, Optional, TypeVar

from framework.core.registry import HEADS
from framework.core.specs import TaskSpec

__all__ = ["HEAD_REGISTRY", "register_head", "build_head", "registered_kinds"]

#: kind -> head class (the registry's entries; read-only use)
HEAD_REGISTRY = HEADS.entries
T = TypeVar("T", bound=type)


def register_head(kind: str) -> Callable[[T], T]:
    """Class decorator registering a head class (a :class:`~framework.heads.base.TaskHead`) for a task kind.

    A kind MedCL does not know becomes a valid ``TaskSpec.kind``.  A head class may define
    ``check_spec(spec)`` (a classmethod raising ``ValueError``) to validate its tasks' specs.

    Raises:
        ValueError: if ``kind`` is not an identifier, or is already served by another class.
    """
    if not isinstance(kind, str) or not kind.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"register_head: kind expected a name of letters, digits, '_' or '-', found {kind!r}")
    return HEADS.register(kind)


def registered_kinds() -> list:
    return HEADS.names()


def build_head(spec: TaskSpec, embed_dim: int, head_args: Optional[Mapping[str, Any]] = None):
    """Instantiate the registered head for ``spec.kind``.

    Args:
        spec: the task to serve.
        embed_dim: backbone embedding width.
        head_args: extra keyword arguments for the head's constructor.

    Raises:
        ValueError: if no head is registered for the kind, the head's ``check_spec`` refuses the
            spec, or the head rejects the arguments.
    """
    cls = HEADS.get(spec.kind, where=f"task '{spec.name}'")
    check = getattr(cls, "check_spec", None)
    if callable(check):
        check(spec)
    try:
        return cls(spec=spec, embed_dim=embed_dim, **dict(head_args or {}))
    except TypeError as err:
        raise ValueError(f"task '{spec.name}': invalid head_args for {cls.__name__}: {err}") from None
