"""Open registries: name -> class, filled from MedCL's modules and from a user's package.

A user's package adds an entry with the registry's decorator (``@register_head("landmarks")``,
``@POLICIES.register("fifo")``, ...) when it is imported (e.g. by its data module's ``class_path``),
or by an entry point in its package metadata (group ``medcl.<group>``, loaded on the first lookup
of an unknown name), or is named by ``class_path`` (``"mypkg.policies.Fifo"``) where a name is
accepted.  Nothing in MedCL has to be edited.

The registries themselves live here, in the neutral core; MedCL's built-in entries register when
their modules are imported, which a lookup does first (``builtins``), so importing the core loads no
model library.
"""
from __future__ import annotations

import difflib
import importlib
import logging
from importlib import metadata
from typing import Any, Dict, Iterable, List, Optional, Sequence, TypeVar

__all__ = ["Registry", "import_class_path", "HEADS", "POLICIES", "STRATEGIES", "METRICS"]

log = logging.getLogger(__name__)
T = TypeVar("T")


def import_class_path(path: str, where: str) -> Any:
    """The object named by ``"package.module.Name"``.

    Raises:
        ValueError: naming ``where``, if the module cannot be imported or has no such attribute.
    """
    module, _, name = path.rpartition(".")
    if not module:
        raise ValueError(f"{where}: expected a registered name or a class_path 'package.module.Class', found {path!r}")
    try:
        return getattr(importlib.import_module(module), name)
    except ImportError as err:
        raise ValueError(f"{where}: class_path {path!r}: cannot import module {module!r} ({err})") from None
    except AttributeError:
        raise ValueError(f"{where}: class_path {path!r}: module {module!r} has no attribute {name!r}") from None


class Registry:
    """Name -> entry, open to users' packages.

    Args:
        what: what an entry is, for messages (``"head kind"``).
        group: entry-point group suffix: packages declare ``medcl.<group>`` entry points.
        builtins: modules that register MedCL's own entries (imported on the first lookup).
        base: entries must be subclasses of it (checked at registration; ``None``: anything callable).
    """

    def __init__(self, what: str, group: str, builtins: Sequence[str] = (), base: Optional[type] = None) -> None:
        self.what, self.group, self.builtins, self.base = what, group, tuple(builtins), base
        self._entries: Dict[str, Any] = {}
        self._loaded_builtins = False
        self._loaded_entry_points = False

    # ------------------------------------------------------------------ registration
    def register(self, name: str, entry: Any = None, *, replace: bool = False) -> Any:
        """Register ``entry`` under ``name``; without ``entry``, a class decorator.

        Raises:
            ValueError: on an empty name, an entry of the wrong type, or a name taken by another entry
                (unless ``replace``).
        """
        if not isinstance(name, str) or not name or "." in name:
            raise ValueError(f"{self.what} registry: name expected a non-empty string without '.', found {name!r}")

        def decorator(obj: T) -> T:
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise ValueError(f"{self.what} registry: {name!r} expected a subclass of {self.base.__qualname__}, found {obj!r}")
            existing = self._entries.get(name)
            if existing is not None and existing is not obj and not replace and _qualname(existing) != _qualname(obj):
                raise ValueError(f"{self.what} registry: {name!r} is already registered to {_qualname(existing)}; pick another name")
            self._entries[name] = obj
            return obj

        return decorator if entry is None else decorator(entry)

    def subclass_decorator(self, name: str, base: type, where: str):
        """A class decorator registering a subclass of ``base`` under ``name`` and setting its ``name`` attribute.

        Raises:
            ValueError: (at decoration) if the class is not a subclass of ``base``, or the name is taken.
        """

        def decorator(cls):
            if not (isinstance(cls, type) and issubclass(cls, base)):
                raise ValueError(f"{where}({name!r}): expected a subclass of {base.__module__}.{base.__qualname__}, found {cls!r}")
            cls.name = name
            return self.register(name)(cls)

        return decorator

    @property
    def entries(self) -> Dict[str, Any]:
        """The live name -> entry mapping of what is registered so far (nothing is imported to fill it)."""
        return self._entries

    def unregister(self, name: str) -> None:
        """Remove ``name`` (tests, or a package replacing an entry)."""
        self._entries.pop(name, None)

    # ------------------------------------------------------------------ lookup
    def _load_builtins(self) -> None:
        if not self._loaded_builtins:
            self._loaded_builtins = True
            for module in self.builtins:
                importlib.import_module(module)

    def _load_entry_points(self) -> None:
        if self._loaded_entry_points:
            return
        self._loaded_entry_points = True
        for ep in metadata.entry_points(group=f"medcl.{self.group}"):
            try:
                loaded = ep.load()
            except Exception as err:  # a broken plug-in names itself, the rest still load
                log.warning("entry point %r of group medcl.%s failed to load: %s", ep.name, self.group, err)
                continue
            if ep.name not in self._entries:
                self.register(ep.name, loaded)

    def _load(self) -> None:
        self._load_builtins()
        self._load_entry_points()

    def known(self, name: str) -> bool:
        """Whether ``name`` is registered by an imported module or an entry point, without importing
        MedCL's built-in modules (for checks that must stay light, such as :class:`TaskSpec`'s)."""
        if name not in self._entries:
            self._load_entry_points()
        return name in self._entries

    def names(self) -> List[str]:
        """Registered names (MedCL's and every plug-in's), sorted."""
        self._load()
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        if name in self._entries:
            return True
        self._load()
        return name in self._entries

    def get(self, name: str, where: str = "") -> Any:
        """The entry named ``name``, or the class at a ``class_path`` (``"pkg.module.Class"``).

        Raises:
            ValueError: naming ``where``, the registered names and the closest one, on an unknown name
                or a class_path that cannot be imported or is not a valid entry.
        """
        where = where or f"{self.what}"
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}: expected a {self.what} name (one of {self.names()}) or a class_path, found {name!r}")
        if "." in name:
            obj = import_class_path(name, where)
            if self.base is not None and not (isinstance(obj, type) and issubclass(obj, self.base)):
                raise ValueError(f"{where}: class_path {name!r} expected a subclass of {self.base.__qualname__}, found {obj!r}")
            return obj
        if name not in self._entries:
            self._load()
        if name not in self._entries:
            close = difflib.get_close_matches(name, list(self._entries), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ValueError(
                f"{where}: unknown {self.what} {name!r}; registered: {sorted(self._entries)}{hint} (a package of yours registers one "
                f"with the registry's decorator when imported, or by a 'medcl.{self.group}' entry point; or give a class_path)"
            )
        return self._entries[name]

    def __iter__(self):
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())

    def items(self) -> Iterable:
        self._load()
        return sorted(self._entries.items())


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


#: task kind -> head class (:func:`framework.heads.register_head`)
HEADS = Registry("head kind", "heads", builtins=("framework.heads",))
#: name -> replay-buffer storage policy class (:mod:`framework.replay.policies`)
POLICIES = Registry("buffer policy", "policies", builtins=("framework.replay",))
#: name -> continual-learning strategy class (:mod:`framework.strategies`)
STRATEGIES = Registry("strategy", "strategies", builtins=("framework.strategies",))
#: name -> continual-learning metric (:mod:`framework.metrics.continual`)
METRICS = Registry("continual metric", "metrics", builtins=("framework.metrics.continual",))
