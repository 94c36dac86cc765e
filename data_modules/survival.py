"""Survival (prognosis) domains: images with a right-censored ``(time, event)`` target.

Items are ``{"image": Tensor[C, H, W] (or [C, D, H, W]), "target": FloatTensor[2]}`` with
``target = (time, event)``; ``image`` is uint8 (0..255, value ``v`` means ``v / 255``; the backbone
converts it) when the source is uint8 (``.npz`` files, 8-bit image folders, the semi-synthetic
MedMNIST images), else float32 in ``[0, 1]`` (see :mod:`data_modules.base`); ``event`` is 1.0
when the event was observed and 0.0 when the subject was censored at ``time``.  The
:class:`~framework.core.specs.TaskSpec` (kind ``"prognosis"``) is available right after construction:
the survival table is read lazily on first access of :attr:`task_spec` (cheap) and its
``time_bins`` are quantile cut points of the Kaplan-Meier curve of the *training* split
(``pycox``'s ``LabTransDiscreteTime(num_time_bins, scheme="quantiles")``).  Images are loaded in
``setup``.

Two modules:

* :class:`SurvivalDataModule`: your own images plus a survival table.
* :class:`SemiSyntheticSurvivalDataModule`: **SEMI-SYNTHETIC** data: real OrganAMNIST CT slices
  (official MedMNIST ``.npz``) whose survival times are *simulated* from the true organ label with
  an exponential proportional-hazards model and independent censoring.  It exists because no real
  imaging + survival data ships with this repository; results on it say nothing about patients.

Semi-synthetic model (times in months)::

    T     ~ Exponential(rate = baseline_hazard * exp(log_hazard[label]))
    C     = min(Exponential(rate = censoring_hazard), max_follow_up)
    time  = min(T, C);   event = 1 if T <= C else 0

Default ``log_hazard`` for the 11 OrganAMNIST organs (official label order), evenly spaced in
[-1.5, 1.5] (for another flag: evenly spaced in [-1.5, 1.5] over that flag's classes)::

    label  organ          log-hazard ratio
    0      bladder        -1.5
    1      left femur     -1.2
    2      right femur    -0.9
    3      heart          -0.6
    4      left kidney    -0.3
    5      right kidney    0.0
    6      liver           0.3
    7      left lung       0.6
    8      right lung      0.9
    9      pancreas        1.2
    10     spleen          1.5
"""
from __future__ import annotations

import csv
import dataclasses
import logging
import math
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from data_modules.base import SPLITS, DomainDataModule, check_subset_sizes, subset_indices
from data_modules.intensity import parse_intensity
from data_modules.tables import check_column_names as _check_names
from data_modules.io import IMAGE_SUFFIXES, image_files_by_id, open_npz, read_array, scale_intensities, to_axial
from data_modules.medmnist import load_medmnist_npz
from data_modules.medmnist_info import MEDMNIST_INFO
from framework.core.specs import TaskSpec

__all__ = [
    "SurvivalDataModule",
    "SemiSyntheticSurvivalDataModule",
    "SurvivalImageDataset",
    "survival_time_bins",
    "harrell_c_index",
]

log = logging.getLogger(__name__)

_SPLIT_CODES = {0: "train", 1: "val", 2: "test"}
#: the columns of a survival CSV and the fields of a survival .npz MedCL reads (names must match exactly)
_CSV_COLUMNS = ("id", "time", "event", "split")
_NPZ_FIELDS = ("images", "time", "event", "split", "ids")


# ---------------------------------------------------------------------------------------------- helpers
class SurvivalImageDataset(Dataset):
    """Images held in memory, channels first, with their ``(time, event)`` targets.

    Items are ``{"image": Tensor[C, *spatial], "target": FloatTensor[2]}``; uint8 images are served
    as uint8 (0..255), others as float32; items are copies, so callers may modify them in place.

    Args:
        images: ``(N, C, *spatial)`` array, uint8 (``v`` means ``v / 255``, served as uint8) or
            float32 in [0, 1].
        times: ``(N,)`` follow-up times.
        events: ``(N,)`` event indicators (1 = event observed, 0 = censored).
    """

    def __init__(self, images: np.ndarray, times: np.ndarray, events: np.ndarray) -> None:
        if not len(images) == len(times) == len(events):
            raise ValueError(f"SurvivalImageDataset: {len(images)} images, {len(times)} times, {len(events)} events")
        self.images = images
        self.targets = torch.as_tensor(np.stack([times, events], axis=1), dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        image = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        # copies, so callers may modify items in place without touching the stored data
        image = image.clone() if image.dtype == torch.uint8 else image.to(torch.float32, copy=True)
        return {"image": image, "target": self.targets[index]}


def survival_time_bins(times: np.ndarray, events: np.ndarray, num_time_bins: int, source: str) -> Tuple[float, ...]:
    """Quantile cut points of the Kaplan-Meier curve (pycox ``LabTransDiscreteTime``, ``scheme="quantiles"``).

    The first cut is 0 and the last the largest time; duplicates are dropped, so fewer than
    ``num_time_bins`` cuts come back when times are heavily tied.

    Raises:
        ValueError: if ``events`` holds no observed event (no survival curve to cut), naming ``source``.
    """
    times = np.asarray(times, dtype=np.float64)
    events = np.asarray(events, dtype=np.float64)
    if not events.any():
        raise ValueError(
            f"{source}: field 'event' of the training split expected at least one observed event (1) to derive "
            f"time bins, found {len(events)} censored samples and no event"
        )
    from pycox.preprocessing.label_transforms import LabTransDiscreteTime

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pycox warns when it drops duplicate cuts; we dedupe anyway
        try:
            cuts = LabTransDiscreteTime(num_time_bins, scheme="quantiles").fit(times, events).cuts
        except (AssertionError, ValueError) as err:
            raise ValueError(f"{source}: could not derive time bins from the training times ({err})") from None
    cuts = np.unique(np.asarray(cuts, dtype=np.float64))
    return tuple(float(c) for c in cuts)


def harrell_c_index(risk: np.ndarray, time: np.ndarray, event: np.ndarray) -> float:
    """Harrell's C-index of ``risk`` (higher = earlier event): MedCL's torchsurv-backed
    :class:`~framework.metrics.ConcordanceIndex` over whole arrays.

    Ties in risk count 1/2; only pairs whose earlier time is an observed event are comparable.
    Returns ``nan`` when no event is observed.
    """
    from framework.metrics import ConcordanceIndex

    metric = ConcordanceIndex()
    target = np.stack([np.asarray(time, dtype=np.float64), np.asarray(event, dtype=np.float64)], axis=1)
    metric.update(torch.as_tensor(np.asarray(risk, dtype=np.float64)), torch.as_tensor(target))
    return float(metric.compute())


def _npy_header(archive, key: str) -> Tuple[Tuple[int, ...], np.dtype]:
    """Shape and dtype of ``key`` in an open ``.npz`` without reading the array."""
    with archive.zip.open(f"{key}.npy") as fp:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
            return tuple(shape), dtype
        if version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
            return tuple(shape), dtype
    array = archive[key]
    return array.shape, array.dtype


def _check_int_arg(owner: str, name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{owner}: {name} expected an integer >= {minimum}, found {value!r}")


# ---------------------------------------------------------------------------------------------- base
class _SurvivalDomain(DomainDataModule):
    """Shared parts: lazily built spec, datasets per split, reference scores."""

    def __init__(self, spec: TaskSpec, num_time_bins: int, batch_size: int, eval_batch_size: Optional[int], num_workers: int, drop_last: bool = False) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, drop_last=drop_last)
        _check_int_arg(type(self).__name__, "num_time_bins", num_time_bins, 2)
        self.num_time_bins = int(num_time_bins)
        self._base_spec = spec
        self._spec: Optional[TaskSpec] = None
        self._datasets: Dict[str, SurvivalImageDataset] = {}

    def _survival(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(times, events)`` of the samples served for ``split`` (no images needed)."""
        raise NotImplementedError

    def _source(self) -> str:
        raise NotImplementedError

    def survival(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        """``(times, events)`` of the samples of ``split`` in dataset order (available before ``setup``)."""
        self._check_split(split)
        time, event = self._survival(split)
        return time.copy(), event.copy()

    @property
    def task_spec(self) -> TaskSpec:
        if self._spec is None:
            times, events = self._survival("train")
            bins = survival_time_bins(times, events, self.num_time_bins, self._source())
            self._spec = dataclasses.replace(self._base_spec, time_bins=bins)
        return self._spec

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"{type(self).__name__}: split expected one of {list(SPLITS)}, found {split!r}")

    def dataset(self, split: str) -> SurvivalImageDataset:
        self._check_split(split)
        if not self._datasets:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for datasets")
        return self._datasets[split]

    def reference_scores(self, split: str) -> Dict[str, float]:
        """Extra reference numbers for the evaluation report of ``split`` (none here)."""
        self._check_split(split)
        return {}

    def _warn_if_degenerate(self) -> None:
        """One warning (per ``setup``) naming every split whose times are all 0 or that holds no event.

        A training split without events is refused earlier (:func:`survival_time_bins`).
        """
        problems = []
        for split in SPLITS:
            time, event = self._survival(split)
            if len(time) and not np.any(time > 0):
                problems.append(f"every time in the '{split}' split is 0 ({len(time)} samples)")
            if len(event) and not np.any(event > 0):
                problems.append(f"the '{split}' split holds no event ({len(event)} samples, all censored)")
        if problems:
            rank_zero_warn(
                f"{type(self).__name__}({self._base_spec.name}): {'; '.join(problems)}; such a split has no comparable pair "
                f"(its C-index is undefined) and teaches a model nothing: check the survival data ({self._source()})"
            )


# ---------------------------------------------------------------------------------------------- user data
class SurvivalDataModule(_SurvivalDomain):
    """A prognosis domain from your own images and survival table.

    Two layouts:

    * **Image folder + CSV**: ``images`` is a folder of ``<id>.png|.jpg|.jpeg|.nii|.nii.gz`` files
      read with :func:`data_modules.io.read_array`; ``table`` is a CSV with header columns
      ``id,time,event`` and an optional ``split`` column (``train``/``val``/``test``); column names
      must match exactly: a column that differs from one of these only in letter case (``Split``)
      or is close to a missing one (``splits``, ``evnt``) is refused.  PNG/JPEG images come out as
      ``(C, H, W)`` with rows as in the picture; NIfTI arrays are ``(C, X, Y[, Z])`` reoriented to
      RAS (``(X, Y, 1)`` counts as 2D; a 4th axis is refused), see :mod:`data_modules.io`.  Image
      files with no row in the CSV are ignored with a logged warning; hidden files and files with
      other extensions are ignored.
    * **``.npz`` file** (``table=None``): keys ``images`` (uint8, ``(N, H, W)`` or ``(N, H, W, C)``;
      for ``spatial_dims=3``: ``(N, D, H, W)`` or ``(N, D, H, W, C)``), ``time`` ``(N,)``, ``event``
      ``(N,)``, optional ``split`` ``(N,)`` with 0/1/2 = train/val/test, optional ``ids`` ``(N,)``
      (field names checked like the CSV's column names).

    Intensities (``intensity``, a policy of :mod:`data_modules.intensity`, e.g. ``ct:lung`` or
    ``mr``; default ``auto``): under ``auto`` uint8 images are served as uint8 (the backbone divides
    by 255), uint16 is divided by its real bit depth, any other dtype (float or other integer NIfTI,
    DICOM) is min-max scaled to [0, 1] per image with a warning, once.  A folder whose files are not
    all 8-bit is served as float32 throughout (8-bit files divided by 255).  DICOM: a ``.dcm`` file
    or a sub-folder of ``.dcm`` files (one series) per id.  Times must be
    finite and >= 0 (any unit; ``time_bins`` are in the same unit); events are 0 (censored) or 1.
    Without a split column, rows are split at random (seeded by ``split_seed``) into
    ``test_fraction`` / ``val_fraction`` / rest for training; each split keeps the file order.
    ``setup`` warns once (naming the task and the splits) when a split's times are all 0 or a
    validation/test split holds no event (a training split without events is refused).

    Args:
        images: an image folder, or an ``.npz`` file.
        table: the survival CSV (required for a folder; must be ``None`` for an ``.npz``).
        task_name: task name in the stream.
        modality: imaging modality, e.g. ``"ct"``.
        in_channels: channels every image must have.
        spatial_dims: 2 for images, 3 for volumes.
        val_fraction: fraction of rows for validation when there is no split column.
        test_fraction: fraction of rows for test when there is no split column.
        split_seed: seed of the random split (only used without a split column).
        num_time_bins: number of quantile cut points for ``time_bins`` (duplicates are dropped).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader workers.
        drop_last: drop the last, incomplete training batch of an epoch (see :class:`DomainDataModule`).
        intensity: the intensity policy of an image folder (:mod:`data_modules.intensity`: ``auto``,
            ``ct:<window>``, ``mr``, ``bits:<n>``, ``range:<low>,<high>``, ``minmax``); an ``.npz`` source takes ``auto`` only.

    Raises:
        ValueError: at construction, on invalid arguments.  On first :attr:`task_spec` access or in
            ``setup``, on a bad table or image (one line naming the file, the column/field, the
            line/id and what was expected and found): missing column, a column name that matches a
            known one only in letter case or closely, negative/non-finite/non-numeric
            time, event not 0/1, duplicate id (in the CSV, or two image files with one id), CSV id
            without image file, unreadable or non-finite image, unknown split value, empty
            split, channel mismatch, a 3D volume for a 2D task (or a 2D image for a 3D task),
            differing image sizes within a split, no observed event in the training split.
        FileNotFoundError: if ``images`` or ``table`` does not exist.

    Example::

        dm = SurvivalDataModule("data/my_ct_pngs", table="data/survival.csv", modality="ct")
        dm.task_spec.time_bins        # known before setup
        dm.setup("fit")
        batch = next(iter(dm.loader("train")))   # {"prognosis": {"image": (64, 1, H, W), "target": (64, 2)}}
    """

    def __init__(
        self,
        images: str,
        table: Optional[str] = None,
        task_name: str = "prognosis",
        modality: str = "unknown",
        in_channels: int = 1,
        spatial_dims: int = 2,
        val_fraction: float = 0.1,
        test_fraction: float = 0.2,
        split_seed: int = 0,
        num_time_bins: int = 16,
        batch_size: int = 64,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        drop_last: bool = False,
        intensity: Optional[Union[str, Dict[str, Any]]] = None,
    ) -> None:
        owner = "SurvivalDataModule"
        if not isinstance(images, (str, Path)) or not str(images):
            raise ValueError(f"{owner}: images expected a folder or an .npz file path, found {images!r}")
        is_npz = str(images).lower().endswith(".npz")
        if is_npz and table is not None:
            raise ValueError(
                f"{owner}: table expected None for an .npz images file ({images}), which holds 'time' and 'event' "
                f"itself; found {table!r}"
            )
        if not is_npz and table is None:
            raise ValueError(f"{owner}: table expected a CSV path (id,time,event[,split]) for the image folder {images}, found None")
        for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value < 1.0:
                raise ValueError(f"{owner}: {name} expected a number in (0, 1), found {value!r}")
        if val_fraction + test_fraction >= 1.0:
            raise ValueError(
                f"{owner}: val_fraction + test_fraction expected < 1 (rows must remain for training), found "
                f"{val_fraction} + {test_fraction} = {val_fraction + test_fraction}"
            )
        _check_int_arg(owner, "split_seed", split_seed, 0)
        policy = parse_intensity(intensity, where=owner)
        if is_npz and policy.kind != "auto":
            raise ValueError(
                f"{owner}: intensity expected 'auto' for an .npz images file ({images}), whose uint8 images are served as they "
                f"are; found {policy.describe()!r} (intensity policies apply to image folders: NIfTI, DICOM, PNG)"
            )
        self.intensity = policy
        spec = TaskSpec(name=task_name, kind="prognosis", modality=modality, in_channels=in_channels, spatial_dims=spatial_dims,
                        intensity=policy.describe(), depth_axis="axial" if not is_npz and spatial_dims == 3 else "stored")
        super().__init__(spec, num_time_bins, batch_size, eval_batch_size, num_workers, drop_last)
        self.is_npz = is_npz
        self.images_path = Path(images)
        self.table_path = Path(table) if table is not None else None
        self.val_fraction = float(val_fraction)
        self.test_fraction = float(test_fraction)
        self.split_seed = int(split_seed)
        self._table: Optional[Dict[str, dict]] = None  # split -> {"ids", "time", "event", "rows", "files"}

    # ------------------------------------------------------------------ table
    def _source(self) -> str:
        return str(self.table_path or self.images_path)

    def _survival(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        part = self._read_table()[split]
        return part["time"], part["event"]

    def _read_table(self) -> Dict[str, dict]:
        if self._table is None:
            ids, times, events, splits = self._read_npz_table() if self.is_npz else self._read_csv()
            files: List[Optional[Path]] = [None] * len(ids) if self.is_npz else self._match_files(ids, self.table_path)
            split_index = self._assign_splits(splits, len(ids))
            self._table = {
                split: {
                    "ids": [ids[i] for i in index],
                    "time": times[index],
                    "event": events[index],
                    "rows": index,
                    "files": [files[i] for i in index],
                }
                for split, index in split_index.items()
            }
        return self._table

    def _read_csv(self):
        path = self.table_path
        if not path.is_file():
            raise FileNotFoundError(f"SurvivalDataModule: survival table not found: {path}")
        if not self.images_path.is_dir():
            raise FileNotFoundError(f"SurvivalDataModule: image folder not found: {self.images_path}")
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
                times.append(self._parse_time(row.get("time"), path, at))
                events.append(self._parse_event(row.get("event"), path, at))
                if has_split:
                    value = (row.get("split") or "").strip()
                    if value not in SPLITS:
                        raise ValueError(f"{path}: column 'split' {at} expected one of {list(SPLITS)}, found {row.get('split')!r}")
                    splits.append(value)
                ids.append(raw_id)
        if not ids:
            raise ValueError(f"{path}: expected at least one data row below the header, found none")
        return ids, np.asarray(times, dtype=np.float64), np.asarray(events, dtype=np.float64), (splits if has_split else None)

    @staticmethod
    def _parse_time(raw, path, at) -> float:
        try:
            value = float(str(raw).strip())
        except ValueError:
            value = None
        if value is None or not math.isfinite(value) or value < 0:
            raise ValueError(f"{path}: column 'time' {at} expected a finite number >= 0, found {raw!r}")
        return value

    @staticmethod
    def _parse_event(raw, path, at) -> float:
        try:
            value = float(str(raw).strip())
        except ValueError:
            value = None
        if value not in (0.0, 1.0):
            raise ValueError(f"{path}: column 'event' {at} expected 0 (censored) or 1 (event), found {raw!r}")
        return value

    def _read_npz_table(self):
        path = self.images_path
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
            shape, dtype = _npy_header(archive, "images")
            self._check_npz_images(path, shape, dtype)
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
            times.append(self._parse_time(raw_time.item() if hasattr(raw_time, "item") else raw_time, path, at))
            events.append(self._parse_event(raw_event.item() if hasattr(raw_event, "item") else raw_event, path, at))
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

    def _check_npz_images(self, path: Path, shape: Tuple[int, ...], dtype: np.dtype) -> None:
        spec = self._base_spec
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

    def _match_files(self, ids: List[str], table: Path) -> List[Path]:
        folder = self.images_path
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

    def _assign_splits(self, splits: Optional[List[str]], n: int) -> Dict[str, np.ndarray]:
        source = self._source()
        if splits is not None:
            values = np.asarray(splits)
            index = {split: np.flatnonzero(values == split) for split in SPLITS}
            for split in SPLITS:
                if len(index[split]) == 0:
                    field = "field 'split'" if self.is_npz else "column 'split'"
                    raise ValueError(
                        f"{source}: {field} expected at least one '{split}' sample, found none "
                        f"(values present: {sorted(set(splits))})"
                    )
            return index
        n_test = int(round(self.test_fraction * n))
        n_val = int(round(self.val_fraction * n))
        order = np.random.default_rng(self.split_seed).permutation(n)
        index = {
            "test": np.sort(order[:n_test]),
            "val": np.sort(order[n_test:n_test + n_val]),
            "train": np.sort(order[n_test + n_val:]),
        }
        for split in SPLITS:
            if len(index[split]) == 0:
                raise ValueError(
                    f"{source}: split '{split}' expected at least one sample after the random split of {n} rows "
                    f"(val_fraction={self.val_fraction}, test_fraction={self.test_fraction}), found 0; add rows, "
                    f"raise the fraction or add a 'split' column"
                )
        return {split: index[split] for split in SPLITS}

    # ------------------------------------------------------------------ images
    def setup(self, stage: Optional[str] = None) -> None:
        if self._datasets:
            return
        table = self._read_table()
        _ = self.task_spec  # fails early on a training split without events
        if self.is_npz:
            with open_npz(self.images_path) as archive:
                images = archive["images"]
            if images.ndim == self._base_spec.spatial_dims + 1:  # no channel axis
                images = images[:, None]
            else:
                images = np.moveaxis(images, -1, 1)
            for split in SPLITS:
                part = table[split]
                self._datasets[split] = SurvivalImageDataset(images[part["rows"]], part["time"], part["event"])
            self._warn_if_degenerate()
            return
        loaded = {}
        for split in SPLITS:
            part = table[split]
            arrays, first = [], None
            for file in part["files"]:
                array = self._check_image(read_array(file), file)
                if array.dtype != np.uint8 or self.intensity.kind != "auto":  # 8-bit under 'auto' is served as is (the backbone divides by 255)
                    array = scale_intensities(array, file, self.intensity)
                if array.ndim == 4:  # a NIfTI/DICOM volume: depth along the superior axis (TaskSpec.depth_axis "axial")
                    array = np.ascontiguousarray(to_axial(array))
                if first is None:
                    first = (file, array.shape)
                elif array.shape != first[1]:
                    raise ValueError(
                        f"{file}: image size expected {tuple(first[1][1:])} like {first[0].name} (same {split} split), "
                        f"found {tuple(array.shape[1:])}; resize images to one size"
                    )
                arrays.append(array)
            loaded[split] = arrays
        # one dtype per task (batches collate, replay holds one kind): any non-8-bit file makes all float
        as_float = any(a.dtype != np.uint8 for arrays in loaded.values() for a in arrays)
        for split in SPLITS:
            arrays = [scale_intensities(a, self.images_path) if as_float and a.dtype == np.uint8 else a for a in loaded[split]]
            part = table[split]
            self._datasets[split] = SurvivalImageDataset(np.stack(arrays), part["time"], part["event"])
        self._warn_if_degenerate()

    def _check_image(self, array: np.ndarray, file: Path) -> np.ndarray:
        spec = self._base_spec
        if spec.spatial_dims == 2:
            if array.ndim == 4:
                raise ValueError(
                    f"{file}: task '{spec.name}' is 2D-only (spatial_dims=2) but a 3D volume was found "
                    f"(shape {tuple(array.shape[1:])}); pass spatial_dims=3 or give 2D slices"
                )
        elif array.ndim != 4:
            raise ValueError(
                f"{file}: task '{spec.name}' expects 3D volumes (spatial_dims=3), found a 2D image of shape "
                f"{tuple(array.shape[1:])}"
            )
        if array.ndim != spec.spatial_dims + 1:
            raise ValueError(f"{file}: image expected {spec.spatial_dims} spatial dims plus channels, found shape {array.shape}")
        if array.shape[0] != spec.in_channels:
            raise ValueError(
                f"{file}: image channels expected {spec.in_channels} (in_channels), found {array.shape[0]} "
                f"(shape {tuple(array.shape)})"
            )
        return np.ascontiguousarray(array)

    def ids(self, split: str) -> List[str]:
        """Ids of the samples of ``split``, in dataset order."""
        self._check_split(split)
        return list(self._read_table()[split]["ids"])


# ---------------------------------------------------------------------------------------------- semi-synthetic
class SemiSyntheticSurvivalDataModule(_SurvivalDomain):
    """**SEMI-SYNTHETIC** prognosis domain: real MedMNIST images, *simulated* survival.

    The images are real (official MedMNIST ``.npz``, by default OrganAMNIST axial CT slices); the
    survival times are not: each image gets a time drawn from the exponential proportional-hazards
    model in the module docstring, driven by its true class (organ) label, plus independent
    exponential censoring and administrative censoring at ``max_follow_up`` (months).  Use it to
    exercise prognosis heads and losses; do not read its numbers as clinical results.

    Simulation: ``rng = numpy.random.default_rng(simulation_seed)``; for each split in the order
    train, val, test, ``n`` standard exponentials for the event times are drawn, then ``n`` for the
    censoring times, over the *whole* official split.  Subsets (same draw as
    :class:`~data_modules.medmnist.MedMNISTDataModule` with the same ``subset_seed``) then select
    images and their simulated survival together, so an image's simulated time does not depend on
    the subset settings.  ``time_bins`` come from the served training split.

    Args:
        flag: MedMNIST flag of a 2D single-label classification file; ``<data_dir>/<flag>.npz``.
        data_dir: folder holding the file.
        file: explicit path to the ``.npz`` file (overrides ``data_dir``).
        task_name: task name in the stream.
        log_hazard: one log-hazard ratio per class (default: evenly spaced in [-1.5, 1.5] in the
            official label order; table in the module docstring).
        baseline_hazard: baseline event rate per month (> 0).
        censoring_hazard: rate of the exponential censoring per month (>= 0; 0 = only administrative).
        max_follow_up: administrative censoring time in months (> 0).
        simulation_seed: seed of the survival simulation.
        train_subset: use a random subset of this many training images (``None`` = all).
        val_subset: same for validation.
        test_subset: same for test.
        subset_seed: seed of the subset draw.
        num_time_bins: number of quantile cut points for ``time_bins``.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader workers.
        drop_last: drop the last, incomplete training batch of an epoch (see :class:`DomainDataModule`).

    Raises:
        ValueError: on an unknown, 3D or non-single-label flag, a ``log_hazard`` of the wrong length
            or with non-finite values, non-positive rates or follow-up, invalid subset sizes or
            seeds; on a malformed file (naming the file and field) or a subset larger than its split.
        FileNotFoundError: if the ``.npz`` file does not exist.

    Example::

        dm = SemiSyntheticSurvivalDataModule(train_subset=1000)
        print(dm.description)                  # SEMI-SYNTHETIC: ...
        dm.setup(); dm.reference_scores("test")   # {"oracle_c_index": ...}
    """

    def __init__(
        self,
        flag: str = "organamnist",
        data_dir: str = "data/demo/medmnist",
        file: Optional[str] = None,
        task_name: str = "organamnist_survival_semisynthetic",
        log_hazard: Optional[Sequence[float]] = None,
        baseline_hazard: float = 0.05,
        censoring_hazard: float = 0.02,
        max_follow_up: float = 60.0,
        simulation_seed: int = 0,
        train_subset: Optional[int] = None,
        val_subset: Optional[int] = None,
        test_subset: Optional[int] = None,
        subset_seed: int = 0,
        num_time_bins: int = 16,
        batch_size: int = 64,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        owner = "SemiSyntheticSurvivalDataModule"
        info = MEDMNIST_INFO.get(flag)
        usable = sorted(k for k, v in MEDMNIST_INFO.items() if v["spatial_dims"] == 2 and v["kind"] == "classification")
        if info is None or flag not in usable:
            raise ValueError(
                f"{owner}: flag expected a 2D single-label MedMNIST flag (one of {usable}), found {flag!r}"
            )
        classes = tuple(info["labels"])
        if log_hazard is None:
            log_hazard = np.linspace(-1.5, 1.5, len(classes))
        try:
            hazard = np.asarray(log_hazard, dtype=np.float64)
        except (TypeError, ValueError):
            hazard = None
        if hazard is None or hazard.shape != (len(classes),) or not np.isfinite(hazard).all():
            raise ValueError(
                f"{owner}({flag}): log_hazard expected {len(classes)} finite numbers (one per class: {list(classes)}), "
                f"found {log_hazard!r}"
            )
        for name, value, low in (("baseline_hazard", baseline_hazard, 0.0), ("max_follow_up", max_follow_up, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= low:
                raise ValueError(f"{owner}({flag}): {name} expected a finite number > 0, found {value!r}")
        if (isinstance(censoring_hazard, bool) or not isinstance(censoring_hazard, (int, float))
                or not math.isfinite(censoring_hazard) or censoring_hazard < 0):
            raise ValueError(f"{owner}({flag}): censoring_hazard expected a finite number >= 0, found {censoring_hazard!r}")
        _check_int_arg(owner, "simulation_seed", simulation_seed, 0)
        _check_int_arg(owner, "subset_seed", subset_seed, 0)
        subsets = check_subset_sizes(f"{owner}({flag})", train_subset, val_subset, test_subset)
        spec = TaskSpec(name=task_name, kind="prognosis", modality=info["modality"], in_channels=info["channels"], spatial_dims=2)
        super().__init__(spec, num_time_bins, batch_size, eval_batch_size, num_workers, drop_last)
        self.flag = flag
        self.path = Path(file) if file else Path(data_dir) / f"{flag}.npz"
        self.class_names = classes
        self.log_hazard = hazard
        self.baseline_hazard = float(baseline_hazard)
        self.censoring_hazard = float(censoring_hazard)
        self.max_follow_up = float(max_follow_up)
        self.simulation_seed = int(simulation_seed)
        self.subsets = subsets
        self.subset_seed = int(subset_seed)
        organ = flag.startswith("organ")
        display = f"Organ{flag[5].upper()}MNIST" if organ else flag
        self.description = (
            f"SEMI-SYNTHETIC: real {display} {info['modality'].upper()} {'slices' if organ else 'images'} (official "
            f"MedMNIST file); survival times simulated from an exponential proportional-hazards model of the "
            f"{'organ' if organ else 'class'} label "
            f"(baseline {self.baseline_hazard}/month, censoring {self.censoring_hazard}/month, follow-up "
            f"{self.max_follow_up:g} months); not real patient outcomes"
        )
        self._sim: Optional[Dict[str, dict]] = None

    def _source(self) -> str:
        return f"{self.path} (semi-synthetic survival)"

    # ------------------------------------------------------------------ simulation (labels only)
    def _read_labels(self) -> Tuple[Dict[str, np.ndarray], int]:
        """Labels of each official split and the image channels, without reading the images."""
        if not self.path.is_file():
            raise FileNotFoundError(f"SemiSyntheticSurvivalDataModule({self.flag}): file not found: {self.path}")
        labels: Dict[str, np.ndarray] = {}
        with open_npz(self.path) as archive:
            for split in SPLITS:
                for key in (f"{split}_images", f"{split}_labels"):
                    if key not in archive.files:
                        raise ValueError(f"{self.path}: missing field '{key}'; found {sorted(archive.files)}")
                array = archive[f"{split}_labels"]
                if array.ndim == 2 and array.shape[1] == 1:
                    array = array[:, 0]
                field = f"{split}_labels"
                if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                    raise ValueError(f"{self.path}: field '{field}' expected integer labels of shape (N,) or (N, 1), found {array.dtype} {archive[field].shape}")
                if array.size and (array.min() < 0 or array.max() >= len(self.class_names)):
                    raise ValueError(
                        f"{self.path}: field '{field}' expected labels in [0, {len(self.class_names) - 1}], found "
                        f"min {array.min()}, max {array.max()}"
                    )
                labels[split] = array.astype(np.int64)
            shape, _ = _npy_header(archive, "train_images")
        channels = shape[-1] if len(shape) == 4 else 1
        return labels, channels

    def _simulation(self) -> Dict[str, dict]:
        if self._sim is not None:
            return self._sim
        labels, channels = self._read_labels()
        self._base_spec = dataclasses.replace(self._base_spec, in_channels=int(channels))
        rng = np.random.default_rng(self.simulation_seed)
        full = {}
        for split in SPLITS:
            label = labels[split]
            n = len(label)
            event_draw = rng.standard_exponential(n)
            censor_draw = rng.standard_exponential(n)
            t_event = event_draw / (self.baseline_hazard * np.exp(self.log_hazard[label]))
            t_censor = censor_draw / self.censoring_hazard if self.censoring_hazard > 0 else np.full(n, np.inf)
            t_censor = np.minimum(t_censor, self.max_follow_up)
            full[split] = {
                "label": label,
                "time": np.minimum(t_event, t_censor),
                "event": (t_event <= t_censor).astype(np.float64),
            }
        lengths = {split: len(full[split]["label"]) for split in SPLITS}
        indices = subset_indices(
            self.subsets, lengths, self.subset_seed, f"SemiSyntheticSurvivalDataModule({self.flag})", self.path
        )
        sim = {}
        for split in SPLITS:
            index = indices[split]
            if index is None:
                index = np.arange(lengths[split])
            sim[split] = {key: value[index] for key, value in full[split].items()}
            sim[split]["index"] = index
        self._sim = sim
        return sim

    def _survival(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        part = self._simulation()[split]
        return part["time"], part["event"]

    def source_indices(self, split: str) -> np.ndarray:
        """Positions in the official ``split`` of the samples served (identity without a subset)."""
        self._check_split(split)
        return self._simulation()[split]["index"].copy()

    def labels(self, split: str) -> np.ndarray:
        """True class labels of the samples of ``split``."""
        self._check_split(split)
        return self._simulation()[split]["label"].copy()

    def true_log_hazard(self, split: str) -> np.ndarray:
        """The simulation's true log-hazard ratio of each sample of ``split`` (``log_hazard[label]``)."""
        return self.log_hazard[self.labels(split)]

    def reference_scores(self, split: str) -> Dict[str, float]:
        """``{"oracle_c_index": c}``: Harrell's C-index of the true log-hazard against the simulated data.

        The best a model can be expected to do on ``split`` (ties in risk, i.e. same organ, count 1/2).
        """
        self._check_split(split)
        time, event = self._survival(split)
        return {"oracle_c_index": harrell_c_index(self.true_log_hazard(split), time, event)}

    # ------------------------------------------------------------------ images
    def setup(self, stage: Optional[str] = None) -> None:
        if self._datasets:
            return
        sim = self._simulation()
        _ = self.task_spec
        arrays = load_medmnist_npz(self.path, len(self.class_names))
        for split in SPLITS:
            part = sim[split]
            if not np.array_equal(arrays[f"{split}_labels"][part["index"]], part["label"]):
                raise ValueError(f"{self.path}: field '{split}_labels' changed while the module was in use; rebuild the module")
            images = arrays[f"{split}_images"][part["index"]]
            images = images[:, None] if images.ndim == 3 else np.moveaxis(images, -1, 1)
            self._datasets[split] = SurvivalImageDataset(images, part["time"], part["event"])
        self._warn_if_degenerate()
