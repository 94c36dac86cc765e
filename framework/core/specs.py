"""Task specifications: the single description of a domain/task from which heads, metrics,
prompts and checkpoints are derived.

A :class:`TaskSpec` is produced by a data module (it knows its label names) and consumed by the
model (it builds a head for it).  Specs are stored in checkpoints as plain dictionaries so that a
grown model can be rebuilt before its weights are loaded.
"""
from __future__ import annotations

import difflib
import math
import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Dict, Mapping, Optional, Tuple

__all__ = ["TASK_KINDS", "TaskSpec", "task_kinds"]

#: MedCL's own task kinds.  A user's package adds a kind by registering a head for it
#: (``@framework.heads.register_head("landmarks")``, see docs/extending.md); :func:`task_kinds` lists all.
TASK_KINDS = ("classification", "multilabel", "prognosis", "segmentation")


def task_kinds() -> Tuple[str, ...]:
    """MedCL's kinds and every kind a user's package registered a head for."""
    from framework.core.registry import HEADS

    return TASK_KINDS + tuple(k for k in HEADS.entries if k not in TASK_KINDS)


def _known_kind(kind: Any) -> bool:
    from framework.core.registry import HEADS

    return isinstance(kind, str) and (kind in TASK_KINDS or HEADS.known(kind))

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")


def _did_you_mean(found: Any, choices) -> str:
    """``"; did you mean 'x'?"`` for the choice closest to a misspelt ``found``, or ``""``."""
    close = difflib.get_close_matches(str(found), [str(c) for c in choices], n=1) if isinstance(found, str) else []
    return f"; did you mean {close[0]!r}?" if close else ""


#: how a volume task's depth axis is taken from a file's array (TaskSpec.depth_axis)
DEPTH_AXES = ("stored", "axial")


@dataclass(frozen=True)
class TaskSpec:
    """Description of one domain/task.

    Args:
        name: unique task name, used as the batch key, head key, metric prefix and checkpoint key.
            Letters, digits, ``_`` and ``-``; must start with a letter.
        kind: one of :data:`TASK_KINDS`, or a kind a user's package registered a head for (:func:`task_kinds`).
        modality: imaging modality, e.g. ``"microscopy"``, ``"ct"``, ``"x-ray"``.
        class_names: class names for classification / multilabel tasks (at least two).
        prompt_template: text prompt with one ``{}`` placeholder for a class name, e.g.
            ``"a microscopy image of a {} blood cell"``.
        label_names: foreground label names for segmentation tasks.
        in_channels: number of image channels the data provides (1 = grayscale, 3 = RGB).
        spatial_dims: 2 for images, 3 for volumes.
        time_bins: prognosis tasks only: increasing cut points (in the data's time unit) of the
            discrete-time grid used by discrete-time survival losses (MTLR).  Data modules derive
            them from the training event times; empty for tasks that need none.
        image_size: ``(H, W)``: the in-plane size the image tower runs at for this task (data
            modules declare the size their images come in); empty: the backbone's own input size
            (what tasks of checkpoints written before this field did).
        intensity: how the data scales raw pixel values to ``[0, 1]`` (``data_modules.intensity``:
            ``"auto"``, ``"ct:abdomen"``, ``"ct:-1000,400"``, ``"mr:0.5,99.5"``, ``"bits:12"``, ...).
            ``medcl predict`` reads new images with the policy the task was trained with.
        depth_axis: volumes only: which axis of a file's array is the depth the image tower slices
            along.  ``"axial"``: NIfTI/DICOM volumes, read as ``(C, X, Y, Z)`` in RAS, are served
            as ``(C, Z, Y, X)``, so each slice is an axial (X, Y) plane (what file-based 3D data
            modules declare); ``"stored"``: the first spatial axis as stored (MedMNIST 3D and other
            ``.npz`` volumes ``(D, H, W)``, and file-based tasks of checkpoints written before this
            field, which sliced a NIfTI volume along X).
        domain: the image source the task's images come from, e.g. ``"organamnist"`` for both the
            OrganAMNIST organ classes and a risk score defined on the same slices: a task router
            (:mod:`framework.routing`) recognises the source of an image and applies every task of
            that source.  Empty: the task is its own source (:attr:`source` is its name).

    Raises:
        ValueError: if any field is missing, has the wrong type or an invalid value.  The message
            names the field, what was expected and what was found.
    """

    name: str
    kind: str
    modality: str = "unknown"
    class_names: Tuple[str, ...] = field(default_factory=tuple)
    prompt_template: str = "a medical image of {}"
    label_names: Tuple[str, ...] = field(default_factory=tuple)
    in_channels: int = 3
    spatial_dims: int = 2
    time_bins: Tuple[float, ...] = field(default_factory=tuple)
    image_size: Tuple[int, ...] = field(default_factory=tuple)
    intensity: str = "auto"
    depth_axis: str = "stored"
    domain: str = ""

    def __post_init__(self) -> None:
        # Accept lists from YAML/JSON but store immutable tuples (the spec is hashable and frozen).
        for name in ("class_names", "label_names", "time_bins", "image_size"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        if self.time_bins and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in self.time_bins):
            object.__setattr__(self, "time_bins", tuple(float(v) for v in self.time_bins))
        self._validate()

    # ------------------------------------------------------------------ validation
    def _fail(self, field_name: str, expected: str, found: Any, hint: str = "") -> None:
        raise ValueError(
            f"TaskSpec '{getattr(self, 'name', '?')}': field '{field_name}' expected {expected}, found {found!r}{hint}"
        )

    def _validate(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            self._fail("name", "a non-empty identifier of letters, digits, '_' or '-' starting with a letter", self.name)
        if not _known_kind(self.kind):
            kinds = task_kinds()
            self._fail(
                "kind", f"one of {list(kinds)} (a package of yours adds one with @framework.heads.register_head; import it first)",
                self.kind, _did_you_mean(self.kind, kinds),
            )
        if not isinstance(self.modality, str) or not self.modality:
            self._fail("modality", "a non-empty string", self.modality)
        if not isinstance(self.class_names, tuple) or not all(isinstance(c, str) and c for c in self.class_names):
            self._fail("class_names", "a list of non-empty strings", self.class_names)
        if not isinstance(self.label_names, tuple) or not all(isinstance(c, str) and c for c in self.label_names):
            self._fail("label_names", "a list of non-empty strings", self.label_names)
        if self.kind in ("classification", "multilabel"):
            if len(self.class_names) < 2:
                self._fail("class_names", f"at least 2 class names for a {self.kind} task", list(self.class_names))
            if len(set(self.class_names)) != len(self.class_names):
                dupes = sorted({c for c in self.class_names if self.class_names.count(c) > 1})
                self._fail("class_names", "unique class names", f"duplicates {dupes}")
            if not isinstance(self.prompt_template, str) or self.prompt_template.count("{}") != 1:
                self._fail("prompt_template", "a string with exactly one '{}' placeholder", self.prompt_template)
        if self.kind == "segmentation" and len(self.label_names) < 1:
            self._fail("label_names", "at least one foreground label name for a segmentation task", list(self.label_names))
        if not isinstance(self.time_bins, tuple) or not all(isinstance(v, float) and math.isfinite(v) for v in self.time_bins):
            self._fail("time_bins", "a list of finite numbers", self.time_bins)
        if any(b <= a for a, b in zip(self.time_bins, self.time_bins[1:])):
            self._fail("time_bins", "strictly increasing cut points", list(self.time_bins))
        if self.time_bins and self.kind != "prognosis":
            self._fail("time_bins", "no time bins for a task that is not of kind 'prognosis'", list(self.time_bins))
        if isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int) or self.in_channels < 1:
            self._fail("in_channels", "a positive integer", self.in_channels)
        if self.image_size and (
            len(self.image_size) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 8 for v in self.image_size)
        ):
            self._fail("image_size", "empty or [height, width], integers >= 8", list(self.image_size))
        if not isinstance(self.intensity, str) or not self.intensity:
            self._fail("intensity", "a non-empty intensity policy string such as 'auto' or 'ct:abdomen'", self.intensity)
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            self._fail("spatial_dims", "2 or 3", self.spatial_dims)
        if self.depth_axis not in DEPTH_AXES:
            self._fail("depth_axis", f"one of {list(DEPTH_AXES)}", self.depth_axis)
        if self.depth_axis != "stored" and self.spatial_dims != 3:
            self._fail("depth_axis", "'stored' for a 2D task (spatial_dims=2)", self.depth_axis)
        if not isinstance(self.domain, str) or (self.domain and not _NAME_RE.match(self.domain)):
            self._fail("domain", "empty or an identifier of letters, digits, '_' or '-' starting with a letter", self.domain)

    # ------------------------------------------------------------------ derived values
    @property
    def num_classes(self) -> int:
        """Number of classes (classification/multilabel) or labels incl. background (segmentation)."""
        if self.kind == "segmentation":
            return len(self.label_names) + 1
        return len(self.class_names)

    @property
    def source(self) -> str:
        """The image source (:attr:`domain`, or the task's own name when that is empty)."""
        return self.domain or self.name

    @property
    def prompts(self) -> Tuple[str, ...]:
        """One text prompt per class, from :attr:`prompt_template`."""
        return tuple(self.prompt_template.format(c.replace("_", " ")) for c in self.class_names)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> Dict[str, Any]:
        """Plain-python representation (lists, not tuples) stored in checkpoints and JSON."""
        out = asdict(self)
        out["class_names"] = list(self.class_names)
        out["label_names"] = list(self.label_names)
        out["time_bins"] = list(self.time_bins)
        out["image_size"] = list(self.image_size)
        return out

    def same_task(self, other: "TaskSpec") -> bool:
        """Whether ``other`` (e.g. the data's spec) describes this (e.g. a checkpoint's) task: equal, or
        equal but for an ``image_size`` this spec leaves to the backbone (a checkpoint written before
        tasks declared sizes keeps running at the size it was trained at), or an image source this
        spec leaves empty (a checkpoint written before tasks named their source)."""
        if self == other:
            return True
        return self == replace(other, image_size=other.image_size if self.image_size else (), domain=other.domain if self.domain else "")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: Optional[str] = None) -> "TaskSpec":
        """Rebuild a spec from :meth:`to_dict` output.

        Args:
            data: mapping with the spec fields.
            source: where the mapping came from (a file or checkpoint), used in error messages.

        Raises:
            ValueError: on unknown or missing fields, or invalid values.
        """
        where = f" in {source}" if source else ""
        if not isinstance(data, Mapping):
            raise ValueError(f"task spec{where}: expected a mapping, found {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            hint = _did_you_mean(unknown[0], sorted(known))
            raise ValueError(f"task spec{where}: unknown field(s) {unknown}; known fields are {sorted(known)}{hint}")
        missing = sorted({"name", "kind"} - set(data))
        if missing:
            raise ValueError(f"task spec{where}: missing required field(s) {missing}")
        try:
            return cls(**dict(data))
        except ValueError as err:
            message, hint, rest = str(err).partition("; did you mean")  # "... found 'x' in <source>; did you mean 'y'?"
            raise ValueError(f"{message}{where}{hint}{rest}") from None
