"""Intensity policies: how raw pixel values become the float ``[0, 1]`` a model sees, per modality.

A CT scan stores Hounsfield units (HU): water is 0, air -1000, bone several hundred, in every
scanner.  Min-max scaling each image (the old default for float and 16-bit-signed files) throws that
away: the same liver gets another value in every scan.  So a task says how its images are scaled
(``intensity:`` in a data module's config), with one of these policies:

=====================================  =============================================================
``auto`` (default)                     uint8 / 255; uint16 by its real bit depth: a PNG's ``sBIT``
                                       chunk if it has one (12-bit data / 4095), else / 65535 (with
                                       a warning, once, when every value fits in 12 bits); bool
                                       0/1; anything else (float, int16, int32: CT, MR, PET) min-max
                                       per image **with a warning, once**, naming the file and the
                                       policies below.
``ct:<window>``                        Hounsfield units clipped to a window and mapped to [0, 1]
                                       (MONAI ``ScaleIntensityRange``, ``clip=True``).  Presets
                                       (:data:`CT_WINDOWS`, width/level in brackets): ``abdomen``
                                       [-160, 240] (W400 L40), ``lung`` [-1350, 150] (W1500 L-600),
                                       ``bone`` [-500, 1300] (W1800 L400), ``brain`` [0, 80] (W80
                                       L40), ``mediastinum`` [-125, 225] (W350 L50), ``liver``
                                       [-45, 105] (W150 L30); or ``ct:<low>,<high>`` in HU.
                                       8-bit files are refused (a PNG/JPEG cannot hold HU), and an
                                       image with no value below 0 HU warns once (raw CT numbers
                                       saved without their rescale intercept look like that).
``mr`` / ``mr:<lower>,<upper>``        percentile normalisation per image and channel (MONAI
                                       ``ScaleIntensityRangePercentiles``, ``clip=True``; default
                                       the 0.5th and 99.5th percentiles): MR has no absolute unit.
``bits:<n>``                           integer data of ``n`` significant bits (8 to 16) divided by
                                       ``2**n - 1``; a value above that is an error naming the file.
``range:<low>,<high>``                 a fixed range clipped and mapped to [0, 1] (e.g. SUV 0..20).
``minmax``                             min-max per image, chosen on purpose (no warning).
=====================================  =============================================================

In YAML either the short string (``intensity: ct:lung``) or a mapping
(``intensity: {kind: ct, window: [-1000, 400]}``, ``{kind: mr, lower: 1, upper: 99}``,
``{kind: bits, bits: 12}``, ``{kind: range, low: 0, high: 20}``).
"""
from __future__ import annotations

import math
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Set, Tuple, Union

import numpy as np

__all__ = ["CT_WINDOWS", "IntensityPolicy", "parse_intensity", "png_significant_bits", "KINDS"]

#: CT windows in Hounsfield units, ``(low, high)`` = ``(level - width / 2, level + width / 2)``
CT_WINDOWS: Dict[str, Tuple[float, float]] = {
    "abdomen": (-160.0, 240.0),      # W400 L40
    "lung": (-1350.0, 150.0),        # W1500 L-600
    "bone": (-500.0, 1300.0),        # W1800 L400
    "brain": (0.0, 80.0),            # W80 L40
    "mediastinum": (-125.0, 225.0),  # W350 L50
    "liver": (-45.0, 105.0),         # W150 L30
}
#: the policy kinds (see the module docstring)
KINDS = ("auto", "ct", "mr", "bits", "range", "minmax")

_WARNED: Set[Tuple[str, str]] = set()  # (policy, reason): every warning of this module is given once per process


def _warn_once(key: Tuple[str, str], message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


def png_significant_bits(path: Union[str, Path]) -> Optional[int]:
    """The significant bits a PNG declares in its ``sBIT`` chunk (the largest over its channels), or ``None``.

    Pillow reads 16-bit PNGs but ignores ``sBIT`` (12-bit CT or X-ray data saved in 16 bits declares
    12 there), so the chunks before the image data are walked here (PNG spec 11.3.3.4): a few
    bytes read, no decoding.  Returns ``None`` for files that are not PNGs or have no ``sBIT``.
    """
    try:
        with open(path, "rb") as fh:
            if fh.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = fh.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    data = fh.read(length)
                    return max(data) if data else None
                if kind in (b"IDAT", b"IEND"):  # sBIT must come before the image data
                    return None
                fh.seek(length + 4, 1)  # chunk data and CRC
    except OSError:
        return None


def _numbers(text: str, count: int, where: str, what: str, found: str) -> Tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        values = ()
    if len(values) != count or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{where}: field 'intensity' expected {what}, found {found!r}")
    return values


@dataclass(frozen=True)
class IntensityPolicy:
    """How raw values become float32 in ``[0, 1]`` (see the module docstring); build with :func:`parse_intensity`.

    Attributes:
        kind: one of :data:`KINDS`.
        low, high: the window (``ct``) or range (``range``), in the data's unit.
        window: the CT preset's name, if one was used.
        lower, upper: percentiles (``mr``).
        bits: significant bits (``bits``).
    """

    kind: str = "auto"
    low: Optional[float] = None
    high: Optional[float] = None
    window: Optional[str] = None
    lower: float = 0.5
    upper: float = 99.5
    bits: Optional[int] = None

    def describe(self) -> str:
        """The policy as the short string :func:`parse_intensity` reads (``ct:abdomen``, ``ct:-1000,400``, ``mr:0.5,99.5``)."""
        if self.kind == "ct":
            return f"ct:{self.window}" if self.window else f"ct:{self.low:g},{self.high:g}"
        if self.kind == "mr":
            return f"mr:{self.lower:g},{self.upper:g}"
        if self.kind == "bits":
            return f"bits:{self.bits}"
        if self.kind == "range":
            return f"range:{self.low:g},{self.high:g}"
        return self.kind

    def monai_transform(self) -> Any:
        """The MONAI array transform of this policy (``ct``, ``range``, ``mr``, ``bits``), or ``None`` for ``auto`` and ``minmax``,
        whose scaling depends on the file (dtype, ``sBIT``) and is done by :meth:`apply`."""
        from monai.transforms import ScaleIntensityRange, ScaleIntensityRangePercentiles

        if self.kind in ("ct", "range"):
            return ScaleIntensityRange(a_min=self.low, a_max=self.high, b_min=0.0, b_max=1.0, clip=True, dtype=np.float32)
        if self.kind == "mr":
            return ScaleIntensityRangePercentiles(
                lower=self.lower, upper=self.upper, b_min=0.0, b_max=1.0, clip=True, channel_wise=True, dtype=np.float32
            )
        if self.kind == "bits":
            return ScaleIntensityRange(a_min=0.0, a_max=float(2 ** self.bits - 1), b_min=0.0, b_max=1.0, clip=False, dtype=np.float32)
        return None

    def apply(self, array: np.ndarray, source: object, significant_bits: Optional[int] = None) -> np.ndarray:
        """Scale one channel-first image (raw values, e.g. from :func:`data_modules.io.read_array`) to float32 in ``[0, 1]``.

        Args:
            array: raw values.
            source: the file, named in errors and warnings.
            significant_bits: the bit depth the file declares (a PNG's ``sBIT``), used by ``auto`` for uint16.

        Raises:
            ValueError: on a non-numeric dtype, NaN or infinite values, an 8-bit image under a CT window, or a value above
                ``2**bits - 1`` under ``bits``; each names ``source`` and the policy.
        """
        from monai.utils import convert_to_numpy

        if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_):
            raise ValueError(f"{source}: expected numeric pixel values, found dtype {array.dtype}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise ValueError(f"{source}: expected finite pixel values, found NaN or infinite values")
        if self.kind == "auto":
            return self._auto(array, source, significant_bits)
        if self.kind == "minmax":
            return _minmax(array)
        if self.kind == "ct":
            if array.dtype in (np.uint8, np.bool_):
                raise ValueError(
                    f"{source}: intensity {self.describe()!r} expected Hounsfield units (a CT volume or DICOM file), found "
                    f"{array.dtype} pixels (an 8-bit PNG/JPEG cannot hold HU); use intensity 'auto' for 8-bit images"
                )
            if array.size and float(array.min()) >= 0.0:
                _warn_once(("ct", "no-negative"), (
                    f"{source}: intensity {self.describe()!r} expects Hounsfield units, but no value is below 0 (range "
                    f"{float(array.min()):g}..{float(array.max()):g}): raw CT numbers saved without their rescale intercept "
                    f"(often -1024) look like this; the window is applied as configured (warned once)"
                ))
        if self.kind == "bits" and np.issubdtype(array.dtype, np.integer) and array.size:
            if int(array.min()) < 0 or int(array.max()) > 2 ** self.bits - 1:
                raise ValueError(
                    f"{source}: intensity {self.describe()!r} expected integers in 0..{2 ** self.bits - 1}, found "
                    f"{int(array.min())}..{int(array.max())}; set the real bit depth"
                )
        return np.ascontiguousarray(convert_to_numpy(self.monai_transform()(array.astype(np.float32)), dtype=np.float32))

    def _auto(self, array: np.ndarray, source: object, significant_bits: Optional[int]) -> np.ndarray:
        if array.dtype == np.uint8:
            return array.astype(np.float32) / np.float32(255.0)
        if array.dtype == np.bool_:
            return array.astype(np.float32)
        if array.dtype == np.uint16:
            bits = significant_bits if significant_bits and 8 <= significant_bits <= 16 else 16
            if bits == 16 and array.size and int(array.max()) < 4096:
                _warn_once(("auto", "uint16-12bit"), (
                    f"{source}: 16-bit image whose values all fit in 12 bits (max {int(array.max())}), divided by 65535 as "
                    f"16-bit data (it will look dark); if it holds 12-bit data (CT, X-ray) set intensity 'bits:12' (warned once)"
                ))
            top = float(2 ** bits - 1)
            if array.size and int(array.max()) > top:
                raise ValueError(
                    f"{source}: its PNG sBIT chunk declares {bits} significant bits (values 0..{int(top)}), found a value of "
                    f"{int(array.max())}; fix the file or set intensity 'bits:16'"
                )
            return array.astype(np.float32) / np.float32(top)
        _warn_once(("auto", "minmax"), (
            f"{source}: {array.dtype} pixel values are min-max scaled per image (intensity 'auto'), which discards absolute "
            f"units such as CT Hounsfield units; set the task's intensity: 'ct:<window>' (one of {sorted(CT_WINDOWS)} or "
            f"'ct:<low>,<high>'), 'mr', 'range:<low>,<high>', or 'minmax' to keep this scaling without this warning (warned once)"
        ))
        return _minmax(array)


def _minmax(array: np.ndarray) -> np.ndarray:
    array = array.astype(np.float32)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    return (array - low) / np.float32(high - low) if high > low else np.zeros_like(array)


def parse_intensity(value: Union[None, str, Mapping[str, Any], IntensityPolicy], where: str = "data") -> IntensityPolicy:
    """Read a policy from its config form: ``None``/``"auto"``, a short string, or a mapping (module docstring).

    Args:
        value: the configured value.
        where: the data module or file, named in errors.

    Raises:
        ValueError: ``"<where>: field 'intensity' expected ..., found ..."`` for an unknown kind or window, a window whose
            low is not below its high, percentiles outside 0..100 or not increasing, or bits outside 8..16.
    """
    if isinstance(value, IntensityPolicy):
        return value
    if value is None:
        return IntensityPolicy()
    if isinstance(value, Mapping):
        spec = dict(value)
        kind = spec.pop("kind", None)
        known = {"ct": {"window"}, "mr": {"lower", "upper"}, "bits": {"bits"}, "range": {"low", "high"}, "auto": set(), "minmax": set()}
        if kind not in known:
            raise ValueError(f"{where}: field 'intensity.kind' expected one of {list(KINDS)}, found {kind!r}")
        if set(spec) - known[kind]:
            raise ValueError(f"{where}: field 'intensity' of kind {kind!r} expected keys {sorted(known[kind])}, found {sorted(spec)}")
        if kind == "ct":
            window = spec.get("window")
            text = window if isinstance(window, str) else ",".join(str(v) for v in (window or ()))
        elif kind == "mr":
            text = f"{spec.get('lower', 0.5)},{spec.get('upper', 99.5)}"
        elif kind == "bits":
            text = str(spec.get("bits"))
        elif kind == "range":
            text = f"{spec.get('low')},{spec.get('high')}"
        else:
            text = ""
        value = f"{kind}:{text}" if text else kind
    if not isinstance(value, str):
        raise ValueError(f"{where}: field 'intensity' expected a string such as 'ct:abdomen' or a mapping with 'kind', found {value!r}")
    kind, _, arg = value.strip().partition(":")
    kind, arg = kind.strip().lower(), arg.strip()
    if kind in ("auto", "minmax"):
        if arg:
            raise ValueError(f"{where}: field 'intensity' expected {kind!r} without arguments, found {value!r}")
        return IntensityPolicy(kind=kind)
    if kind == "ct":
        if arg.lower() in CT_WINDOWS:
            low, high = CT_WINDOWS[arg.lower()]
            return IntensityPolicy(kind="ct", low=low, high=high, window=arg.lower())
        if not arg:
            raise ValueError(f"{where}: field 'intensity' expected 'ct:<window>' with a window from {sorted(CT_WINDOWS)} or 'ct:<low>,<high>' in HU, found {value!r}")
        low, high = _numbers(arg, 2, where, f"'ct:<window>' with a window from {sorted(CT_WINDOWS)} or 'ct:<low>,<high>' in HU", value)
        if not low < high:
            raise ValueError(f"{where}: field 'intensity' expected a CT window with low < high, found {value!r}")
        return IntensityPolicy(kind="ct", low=low, high=high)
    if kind == "range":
        low, high = _numbers(arg, 2, where, "'range:<low>,<high>' with two numbers", value)
        if not low < high:
            raise ValueError(f"{where}: field 'intensity' expected a range with low < high, found {value!r}")
        return IntensityPolicy(kind="range", low=low, high=high)
    if kind == "mr":
        lower, upper = _numbers(arg, 2, where, "'mr' or 'mr:<lower>,<upper>' with two percentiles", value) if arg else (0.5, 99.5)
        if not 0.0 <= lower < upper <= 100.0:
            raise ValueError(f"{where}: field 'intensity' expected percentiles with 0 <= lower < upper <= 100, found {value!r}")
        return IntensityPolicy(kind="mr", lower=lower, upper=upper)
    if kind == "bits":
        try:
            bits = int(arg)
        except ValueError:
            bits = -1
        if not 8 <= bits <= 16:
            raise ValueError(f"{where}: field 'intensity' expected 'bits:<n>' with n from 8 to 16, found {value!r}")
        return IntensityPolicy(kind="bits", bits=bits)
    raise ValueError(f"{where}: field 'intensity' expected one of {list(KINDS)} (e.g. 'ct:abdomen', 'mr', 'bits:12'), found {value!r}")
