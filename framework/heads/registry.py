"""Head registry: maps a task kind to the head class that serves it.

New kinds (prognosis, segmentation, ...) plug in with ``@register_head("kind")``; paradigm code
never changes because it only talks to the :class:`~framework.heads.base.TaskHead` interface.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Mapping, Optional, TypeVar

from framework.specs import TASK_KINDS, TaskSpec

__all__ = ["HEAD_REGISTRY", "register_head", "build_head", "registered_kinds"]

HEAD_REGISTRY: Dict[str, type] = {}
T = TypeVar("T", bound=type)


def register_head(kind: str) -> Callable[[T], T]:
    """Class decorator registering a head class for a task kind.

    Raises:
        ValueError: if ``kind`` is not in :data:`framework.specs.TASK_KINDS` or already registered.
    """
    if kind not in TASK_KINDS:
        raise ValueError(f"register_head: kind expected one of {list(TASK_KINDS)}, found {kind!r}")

    def decorator(cls: T) -> T:
        existing = HEAD_REGISTRY.get(kind)
        if existing is not None and existing is not cls:
            raise ValueError(f"register_head: kind {kind!r} already served by {existing.__qualname__}")
        HEAD_REGISTRY[kind] = cls
        return cls

    return decorator


def registered_kinds() -> list:
    return sorted(HEAD_REGISTRY)


def build_head(spec: TaskSpec, embed_dim: int, head_args: Optional[Mapping[str, Any]] = None):
    """Instantiate the registered head for ``spec.kind``.

    Args:
        spec: the task to serve.
        embed_dim: backbone embedding width.
        head_args: extra keyword arguments for the head's constructor.

    Raises:
        ValueError: if no head is registered for the kind, or the head rejects the arguments.
    """
    cls = HEAD_REGISTRY.get(spec.kind)
    if cls is None:
        raise ValueError(
            f"task '{spec.name}': no head registered for kind {spec.kind!r}; registered kinds: {registered_kinds()}"
        )
    try:
        return cls(spec=spec, embed_dim=embed_dim, **dict(head_args or {}))
    except TypeError as err:
        raise ValueError(f"task '{spec.name}': invalid head_args for {cls.__name__}: {err}") from None
