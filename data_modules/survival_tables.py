"""The survival file readers of :class:`~data_modules.survival.SurvivalDataModule`.

A survival CSV (``id,time,event[,split]``) beside an image folder, or a survival ``.npz`` (``images``,
``time``, ``event``, optional ``split`` and ``ids``); each reader returns ``(ids, times, events,
splits)`` and refuses a malformed file with one line naming the file, the column/field, the
line/index and what was expected and found.  Then :func:`match_files` pairs ids with image files
and :func:`assign_splits` turns the split values (or a seeded random split) into row indices.
"""
from __future__ import annotations

import csv
import logging
import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from data_modules.base import SPLITS
from data_modules.io import IMAGE_SUFFIXES, image_files_by_id, open_npz
from data_modules.survival_base import npy_header
from data_modules.tables import check_column_names as _check_names
from framework.core.specs import TaskSpec

__all__ = ["read_csv_table", "read_npz_table", "parse_time", "parse_event", "check_npz_images", "match_files", "assign_splits"]

# the logger of data_modules.survival, where this warning was always logged (users filter on that name)
log = logging.getLogger("data_modules.survival")

_SPLIT_CODES = {0: "train", 1: "val", 2: "test"}
#: the columns of a survival CSV and the fields of a survival .npz MedCL reads (names must match exactly)
_CSV_COLUMNS = ("id", "time", "event", "split")
_NPZ_FIELDS = ("images", "time", "event", "split", "ids")


def read_csv_table(path: Path, images_path: Path):
    """``(ids, times, events, splits)`` of a survival CSV (``splits`` is ``None`` without a split column).

    Raises:
        FileNotFoundError: if the table or the image folder ``images_path`` does not exist.
        ValueError: on a bad header or row (naming the file, column and line).
    """
    if not path.is_file():
        raise FileNotFoundError(f"SurvivalDataModule: survival table not found: {path}")
    if not images_path.is_dir():
        raise FileNotFoundError(f"SurvivalDataModule: image folder not found: {images_path}")
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        _check_names(header, _CSV_COLUMNS, path, "column", "header columns id,time,event and optional split")
        missing = [c for c in ("id", "time", "event") if c not in header]
        if missing:
            raise ValueError(
                f"{path}: missing column(s) {missing}; expected header columns id,time,event (optional split), "
                f"found {header}"
            )
        has_split = "split" in header
        ids, times, events, splits, seen = [], [], [], [], {}
        for row in reader:
            line = reader.line_num
            raw_id = (row.get("id") or "").strip()
            if not raw_id:
                raise ValueError(f"{path}: column 'id' at line {line} expected a non-empty id, found {row.get('id')!r}")
            if raw_id in seen:
                raise ValueError(
                    f"{path}: column 'id' at line {line} expected unique ids, found duplicate {raw_id!r} "
                    f"(first at line {seen[raw_id]})"
                )
            seen[raw_id] = line
            at = f"at line {line} (id {raw_id!r})"
            times.append(parse_time(row.get("time"), path, at))
            events.append(parse_event(row.get("event"), path, at))
            if has_split:
                value = (row.get("split") or "").strip()
                if value not in SPLITS:
                    raise ValueError(f"{path}: column 'split' {at} expected one of {list(SPLITS)}, found {row.get('split')!r}")
                splits.append(value)
            ids.append(raw_id)
    if not ids:
        raise ValueError(f"{path}: expected at least one data row below the header, found none")
    return ids, np.asarray(times, dtype=np.float64), np.asarray(events, dtype=np.float64), (splits if has_split else None)



def parse_time(raw, path, at) -> float:
    """A survival time: a finite number >= 0 (``at`` says where, for the error)."""
    try:
        value = float(str(raw).strip())
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value < 0:
        raise ValueError(f"{path}: column 'time' {at} expected a finite number >= 0, found {raw!r}")
    return value

def parse_event(raw, path, at) -> float:
    """An event indicator: 0 (censored) or 1 (event)."""
    try:
        value = float(str(raw).strip())
    except ValueError:
        value = None
    if value not in (0.0, 1.0):
        raise ValueError(f"{path}: column 'event' {at} expected 0 (censored) or 1 (event), found {raw!r}")
    return value


def read_npz_table(path: Path, spec: TaskSpec):
    """``(ids, times, events, splits)`` of a survival ``.npz`` (images checked by their header only, against ``spec``).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on a missing or malformed field (naming the file, field and index).
    """
    if not path.is_file():
        raise FileNotFoundError(f"SurvivalDataModule: .npz file not found: {path}")
    with open_npz(path) as archive:
        _check_names(list(archive.files), _NPZ_FIELDS, path, "field", "fields images, time, event and optional split, ids")
        missing = [k for k in ("images", "time", "event") if k not in archive.files]
        if missing:
            raise ValueError(
                f"{path}: missing field(s) {missing}; expected fields images, time, event (optional split, ids), "
                f"found {sorted(archive.files)}"
            )
        shape, dtype = npy_header(archive, "images")
        check_npz_images(path, shape, dtype, spec)
        n = shape[0]
        fields = {k: archive[k] for k in ("time", "event", "split", "ids") if k in archive.files}
    for key, array in fields.items():
        if array.shape != (n,):
            raise ValueError(f"{path}: field '{key}' expected shape ({n},) to match 'images', found {array.shape}")
    ids = [str(v) for v in fields["ids"]] if "ids" in fields else [str(i) for i in range(n)]
    seen: Dict[str, int] = {}
    for i, value in enumerate(ids):
        if value in seen:
            raise ValueError(f"{path}: field 'ids' at index {i} expected unique ids, found duplicate {value!r} (first at index {seen[value]})")
        seen[value] = i
    times, events = [], []
    for i in range(n):
        at = f"at index {i} (id {ids[i]!r})"
        raw_time, raw_event = fields["time"][i], fields["event"][i]
        times.append(parse_time(raw_time.item() if hasattr(raw_time, "item") else raw_time, path, at))
        events.append(parse_event(raw_event.item() if hasattr(raw_event, "item") else raw_event, path, at))
    splits = None
    if "split" in fields:
        splits = []
        for i, code in enumerate(fields["split"]):
            value = code.item() if hasattr(code, "item") else code
            if isinstance(value, (bool, str)) or value not in _SPLIT_CODES:
                raise ValueError(
                    f"{path}: field 'split' at index {i} (id {ids[i]!r}) expected 0 (train), 1 (val) or 2 (test), "
                    f"found {value!r}"
                )
            splits.append(_SPLIT_CODES[int(value)])
    return ids, np.asarray(times, dtype=np.float64), np.asarray(events, dtype=np.float64), splits


def check_npz_images(path: Path, shape: Tuple[int, ...], dtype: np.dtype, spec: TaskSpec) -> None:
    """Refuse an ``images`` field whose dtype, rank or channels do not fit ``spec``."""
    if dtype != np.uint8:
        raise ValueError(f"{path}: field 'images' expected dtype uint8, found {dtype}")
    if spec.spatial_dims == 2:
        if len(shape) == 3:
            channels = 1
        elif len(shape) == 4 and shape[-1] <= 4:
            channels = shape[-1]
        elif len(shape) in (4, 5):
            raise ValueError(
                f"{path}: field 'images' has shape {shape}, a 3D volume, but task '{spec.name}' is 2D-only "
                f"(spatial_dims=2) and expects (N, H, W) or (N, H, W, C)"
            )
        else:
            raise ValueError(f"{path}: field 'images' expected shape (N, H, W) or (N, H, W, C), found {shape}")
    else:
        if len(shape) not in (4, 5):
            raise ValueError(
                f"{path}: field 'images' expected 3D volumes (N, D, H, W) or (N, D, H, W, C) for task "
                f"'{spec.name}' (spatial_dims=3), found shape {shape}"
            )
        channels = 1 if len(shape) == 4 else shape[-1]
    if channels != spec.in_channels:
        raise ValueError(
            f"{path}: field 'images' expected {spec.in_channels} channel(s) (in_channels), found {channels} "
            f"(shape {shape})"
        )


def match_files(folder: Path, ids: List[str], table: Path) -> List[Path]:
    """The image file of each id in ``folder`` (files without a row are ignored with a logged warning)."""
    by_stem = image_files_by_id(folder)
    files = []
    for row_id in ids:
        if row_id not in by_stem:
            raise ValueError(
                f"{table}: column 'id' value {row_id!r} has no image file in {folder} (expected {row_id}"
                f"{{{','.join(IMAGE_SUFFIXES)}}}), found none"
            )
        files.append(by_stem[row_id])
    unused = sorted(set(by_stem) - set(ids))
    if unused:
        log.warning(
            "%s: %d image file(s) have no row in %s and are ignored, e.g. %s",
            folder, len(unused), table, [by_stem[u].name for u in unused[:5]],
        )
    return files


def assign_splits(
    splits: Optional[List[str]], n: int, source: str, is_npz: bool, val_fraction: float, test_fraction: float, split_seed: int
) -> Dict[str, np.ndarray]:
    """Row indices of each split: from the ``splits`` values, else a random split seeded by ``split_seed``."""
    if splits is not None:
        values = np.asarray(splits)
        index = {split: np.flatnonzero(values == split) for split in SPLITS}
        for split in SPLITS:
            if len(index[split]) == 0:
                field = "field 'split'" if is_npz else "column 'split'"
                raise ValueError(
                    f"{source}: {field} expected at least one '{split}' sample, found none "
                    f"(values present: {sorted(set(splits))})"
                )
        return index
    n_test = int(round(test_fraction * n))
    n_val = int(round(val_fraction * n))
    order = np.random.default_rng(split_seed).permutation(n)
    index = {
        "test": np.sort(order[:n_test]),
        "val": np.sort(order[n_test:n_test + n_val]),
        "train": np.sort(order[n_test + n_val:]),
    }
    for split in SPLITS:
        if len(index[split]) == 0:
            raise ValueError(
                f"{source}: split '{split}' expected at least one sample after the random split of {n} rows "
                f"(val_fraction={val_fraction}, test_fraction={test_fraction}), found 0; add rows, "
                f"raise the fraction or add a 'split' column"
            )
    return {split: index[split] for split in SPLITS}
