"""Clinical image collections read on demand: NIfTI, DICOM series and PNG through MONAI, with a cache.

:class:`VolumeDataModule` is the data module for collections that do not fit in memory (a
hospital's CT archive).  ``setup`` reads only the manifest (a CSV, or a folder listing) and checks
it; each image is read when the loader asks for it, through a MONAI pipeline:

1. read with :func:`data_modules.io.read_array_with_geometry` (NIfTI and DICOM reoriented to RAS,
   DICOM identifiers dropped) and scaled by the task's intensity policy
   (:mod:`data_modules.intensity`: CT windows in HU, MR percentiles, real bit depths);
2. resampled to ``spacing`` (mm) with MONAI ``Spacingd``, image (bilinear) and mask (nearest)
   together, on the image's affine;
3. laid out ``(C, Z, Y, X)`` (:func:`data_modules.io.to_axial`: the tower slices axially,
   ``TaskSpec.depth_axis = "axial"``) and padded or cropped to ``spatial_size`` (MONAI
   ``ResizeWithPadOrCropd``, centred) when one is given;
4. cached: ``cache: disk`` keeps the output of steps 1-3 in MONAI ``PersistentDataset`` files under
   ``cache_dir`` (the first epoch reads and resamples, later epochs and runs load tensors), and
   ``cache: memory`` in MONAI ``CacheDataset`` up to ``cache_memory_gb``; ``none`` reads every time;
5. training only: random flips (MONAI ``RandFlipd``) after the cache.

Peak memory is then a few batches, not the collection.  The cache folder's name holds a hash of
every setting of steps 1-3, and each item's key holds its files' sizes and modification times, so
a changed setting or a replaced file is never served from a stale cache.

Manifests:

* ``table``: a CSV with columns ``image`` (a file, or a DICOM series folder, relative to the CSV's
  folder or absolute), ``split`` (``train``/``val``/``test``, required: a collection without an
  explicit split is refused rather than split at random), and per task kind ``mask``
  (segmentation), ``label`` (classification: a class name from ``class_names`` or its index), or
  ``time`` and ``event`` (prognosis).  A column that only looks like a known one (``Split``,
  ``splits``, ``lable``) is refused.
* ``root`` (segmentation): ``root/{train,val,test}/{images,masks}/<id>`` like
  :class:`~data_modules.segmentation.SegmentationDataModule`, images as files or series folders.
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from data_modules.base import SPLITS, DomainDataModule
from data_modules.intensity import IntensityPolicy, parse_intensity
from data_modules.io import check_same_geometry, file_id, image_files_by_id, read_array_with_geometry, scale_intensities, to_axial
from data_modules.tables import check_column_names
from framework.core.specs import TaskSpec

__all__ = ["VolumeDataModule", "CACHE_KINDS"]

#: ``cache`` values of :class:`VolumeDataModule`
CACHE_KINDS = ("none", "memory", "disk")
_KINDS = ("segmentation", "classification", "prognosis")
_TARGET_COLUMNS = {"segmentation": ("mask",), "classification": ("label",), "prognosis": ("time", "event")}
#: bumped when steps 1-3 change meaning, so older cache folders are not reused
_PIPELINE_VERSION = 1


def _stamp(path: Path) -> str:
    """Size and modification time of a file, or of every file of a DICOM series folder (cache keys)."""
    files = sorted(p for p in path.iterdir() if p.is_file()) if path.is_dir() else [path]
    return ";".join(f"{p.name}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in files)


class _Load:
    """MONAI-style dictionary transform: read ``image`` (and ``mask``), scale the image, keep the affine for ``Spacingd``."""

    def __init__(self, policy: IntensityPolicy, spatial_dims: int, in_channels: int) -> None:
        self.policy = policy
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels

    def __call__(self, item: Dict[str, Any]) -> Dict[str, Any]:
        from monai.data import MetaTensor

        path = Path(item["image"])
        array, geometry = read_array_with_geometry(path)
        if array.ndim - 1 != self.spatial_dims:
            raise ValueError(
                f"{path}: field 'image' expected a {'volume' if self.spatial_dims == 3 else '2D image'} for a task with "
                f"spatial_dims={self.spatial_dims}, found shape {tuple(array.shape[1:])}"
            )
        if array.shape[0] != self.in_channels:
            raise ValueError(f"{path}: field 'image' expected {self.in_channels} channel(s), found {array.shape[0]}")
        image = scale_intensities(array, path, self.policy)
        affine = torch.as_tensor(geometry.affine if geometry is not None and geometry.affine is not None else np.eye(4), dtype=torch.float64)
        out = dict(item)
        out["image"] = MetaTensor(torch.from_numpy(np.ascontiguousarray(image)), affine=affine)
        if "mask" in item:
            mask_path = Path(item["mask"])
            mask, mask_geometry = read_array_with_geometry(mask_path)
            check_same_geometry(path, geometry, mask_path, mask_geometry)
            if mask.shape[0] != 1 or mask.shape[1:] != array.shape[1:]:
                raise ValueError(
                    f"{mask_path}: field 'mask' expected one channel of the image's shape {tuple(array.shape[1:])}, "
                    f"found {tuple(mask.shape)}"
                )
            if np.issubdtype(mask.dtype, np.floating) and not np.array_equal(mask, np.round(mask)):
                raise ValueError(f"{mask_path}: field 'mask' expected whole-number labels, found fractional values")
            out["mask"] = MetaTensor(torch.from_numpy(np.ascontiguousarray(mask.astype(np.int16))), affine=affine.clone())
        return out


class _Finish:
    """Axial layout, plain tensors, and the target in the item format of :mod:`data_modules.base`."""

    def __init__(self, kind: str, spatial_dims: int, num_labels: int) -> None:
        self.kind = kind
        self.spatial_dims = spatial_dims
        self.num_labels = num_labels

    def __call__(self, item: Dict[str, Any]) -> Dict[str, Any]:
        image = torch.as_tensor(item["image"]).as_subclass(torch.Tensor).to(torch.float32)
        out: Dict[str, Any] = {}
        if self.spatial_dims == 3:
            image = image.permute(0, 3, 2, 1)  # (C, X, Y, Z) -> (C, Z, Y, X), as data_modules.io.to_axial
        out["image"] = image.contiguous()
        if self.kind == "segmentation":
            mask = torch.as_tensor(item["mask"]).as_subclass(torch.Tensor)[0].round().to(torch.long)
            if self.spatial_dims == 3:
                mask = mask.permute(2, 1, 0)
            if int(mask.min()) < 0 or int(mask.max()) > self.num_labels:
                raise ValueError(
                    f"{item['mask_path']}: field 'mask' expected labels 0..{self.num_labels}, found {int(mask.min())}..{int(mask.max())}"
                )
            out["target"] = mask.contiguous()
        elif self.kind == "classification":
            out["target"] = torch.tensor(int(item["label"]), dtype=torch.long)
        else:
            out["target"] = torch.tensor([float(item["time"]), float(item["event"])], dtype=torch.float32)
        return out


class _Sized:
    """Pad or crop image and mask to ``spatial_size`` (after the axial layout, so sizes are (D, H, W))."""

    def __init__(self, spatial_size: Sequence[int]) -> None:
        from monai.transforms import ResizeWithPadOrCrop

        self.resize = ResizeWithPadOrCrop(spatial_size=tuple(spatial_size), mode="constant")

    def __call__(self, item: Dict[str, Any]) -> Dict[str, Any]:
        out = dict(item)
        out["image"] = torch.as_tensor(self.resize(item["image"])).as_subclass(torch.Tensor)
        if item["target"].ndim >= 2:
            out["target"] = torch.as_tensor(self.resize(item["target"][None])).as_subclass(torch.Tensor)[0]
        return out


class _Flip:
    """Training augmentation after the cache: random flips of image and mask along every spatial axis (MONAI ``RandFlipd``)."""

    def __init__(self, spatial_dims: int, segmentation: bool) -> None:
        from monai.transforms import Compose, RandFlipd

        keys = ["image", "target"] if segmentation else ["image"]
        self.segmentation = segmentation
        self.transform = Compose([RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)])

    def __call__(self, item: Dict[str, Any]) -> Dict[str, Any]:
        self.transform.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ()).item()))
        if self.segmentation:
            out = self.transform({"image": item["image"], "target": item["target"][None]})
            return {"image": torch.as_tensor(out["image"]).as_subclass(torch.Tensor).contiguous(),
                    "target": torch.as_tensor(out["target"]).as_subclass(torch.Tensor)[0].contiguous()}
        out = self.transform({"image": item["image"]})
        return {"image": torch.as_tensor(out["image"]).as_subclass(torch.Tensor).contiguous(), "target": item["target"]}


class _Augmented(Dataset):
    """Items ``{"image", "target"}`` of a base dataset (a MONAI cache, a LitData stream), flipped at random when training."""

    def __init__(self, base: Dataset, augment: Optional[_Flip]) -> None:
        self.base = base
        self.augment = augment

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.base[index]
        item = {"image": torch.as_tensor(item["image"]), "target": torch.as_tensor(item["target"])}
        return self.augment(item) if self.augment is not None else item


class VolumeDataModule(DomainDataModule):
    """A collection of NIfTI / DICOM / PNG images read on demand with MONAI and cached (module docstring).

    Args:
        table: a CSV manifest (exactly one of ``table`` and ``root``).
        root: a segmentation folder ``root/{train,val,test}/{images,masks}/<id>``.
        task_name: the task's name.
        kind: ``segmentation``, ``classification`` or ``prognosis``.
        label_names: segmentation: foreground label names (mask value ``i`` is ``label_names[i - 1]``).
        class_names: classification: class names (``label`` holds a name or its index).
        modality: imaging modality, e.g. ``"ct"``.
        in_channels: image channels.
        spatial_dims: 3 for volumes, 2 for images.
        intensity: the intensity policy (``ct:abdomen``, ``mr``, ``bits:12``, ...; :mod:`data_modules.intensity`).
        spacing: resample to these voxel sizes in mm (``(x, y, z)``, RAS), or ``None`` to keep each file's grid.
        spatial_size: pad or crop every item to ``(D, H, W)`` (3D, after the axial layout) or ``(H, W)``;
            ``None``: items keep their size (then use ``batch_size: 1`` unless all have one size).
        image_size: the in-plane size the tower runs at (``TaskSpec.image_size``; larger slices are
            segmented by sliding windows, see :class:`~framework.heads.SegmentationHead`).
        cache: ``none``, ``memory`` or ``disk``.
        cache_dir: the folder of ``disk`` caches (a sub-folder per task and settings); default
            ``<manifest folder>/.medcl_cache``.
        cache_memory_gb: ``memory``: at most this many GB of cached items (the first items of each
            split, in order; the rest are read on demand).
        num_time_bins: prognosis: quantile cut points of the training event times.
        augment: random flips of training items.
        batch_size, eval_batch_size, num_workers, drop_last: as :class:`DomainDataModule`.

    Raises:
        ValueError: on invalid arguments; in :meth:`setup`, on a manifest with a missing or
            near-miss column, an unknown split, a missing file, an unknown class, a split without
            items; while loading, on unreadable files or shapes that do not fit the task (every
            message names the file and the field).
    """

    def __init__(
        self,
        table: Optional[str] = None,
        root: Optional[str] = None,
        task_name: str = "volumes",
        kind: str = "segmentation",
        label_names: Optional[List[str]] = None,
        class_names: Optional[List[str]] = None,
        modality: str = "ct",
        in_channels: int = 1,
        spatial_dims: int = 3,
        intensity: Optional[Union[str, Dict[str, Any]]] = None,
        spacing: Optional[List[float]] = None,
        spatial_size: Optional[List[int]] = None,
        image_size: Optional[int] = None,
        cache: str = "disk",
        cache_dir: Optional[str] = None,
        cache_memory_gb: float = 4.0,
        num_time_bins: int = 16,
        augment: bool = True,
        batch_size: int = 2,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size, num_workers=num_workers, drop_last=drop_last)
        me = "VolumeDataModule"
        if (table is None) == (root is None):
            raise ValueError(f"{me}: expected exactly one of table (a CSV manifest) or root (a folder), found "
                             f"{'both' if table is not None else 'neither'}")
        if kind not in _KINDS:
            raise ValueError(f"{me}: kind expected one of {list(_KINDS)}, found {kind!r}")
        if root is not None and kind != "segmentation":
            raise ValueError(f"{me}: root (a folder of images and masks) serves kind 'segmentation'; for {kind!r} give a table")
        if cache not in CACHE_KINDS:
            raise ValueError(f"{me}: cache expected one of {list(CACHE_KINDS)}, found {cache!r}")
        if isinstance(cache_memory_gb, bool) or not isinstance(cache_memory_gb, (int, float)) or not cache_memory_gb > 0:
            raise ValueError(f"{me}: cache_memory_gb expected a number > 0, found {cache_memory_gb!r}")
        if spatial_dims not in (2, 3) or isinstance(spatial_dims, bool):
            raise ValueError(f"{me}: spatial_dims expected 2 or 3, found {spatial_dims!r}")
        if spacing is not None and (
            not isinstance(spacing, (list, tuple)) or len(spacing) != spatial_dims
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in spacing)
        ):
            raise ValueError(f"{me}: spacing expected null or {spatial_dims} positive numbers (mm), found {spacing!r}")
        if spatial_size is not None and (
            not isinstance(spatial_size, (list, tuple)) or len(spatial_size) != spatial_dims
            or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in spatial_size)
        ):
            raise ValueError(f"{me}: spatial_size expected null or {spatial_dims} positive integers, found {spatial_size!r}")
        if not isinstance(augment, bool):
            raise ValueError(f"{me}: augment expected true or false, found {augment!r}")
        self.policy = parse_intensity(intensity, where=me)
        self.kind = kind
        self.table = Path(table) if table is not None else None
        self.root = Path(root) if root is not None else None
        self.spacing = [float(v) for v in spacing] if spacing is not None else None
        self.spatial_size = list(spatial_size) if spatial_size is not None else None
        self.cache = cache
        self.cache_root = Path(cache_dir) if cache_dir is not None else (self.table.parent if self.table else self.root) / ".medcl_cache"
        self.cache_memory_gb = float(cache_memory_gb)
        self.num_time_bins = num_time_bins
        self.augment = augment
        in_plane = None if spatial_size is None else tuple(spatial_size[-2:])
        if image_size is not None:
            in_plane = (image_size, image_size)
        self._base_spec = TaskSpec(
            name=task_name,
            kind=kind,
            modality=modality,
            label_names=tuple(label_names or (["foreground"] if kind == "segmentation" else [])),
            class_names=tuple(class_names or ()),
            in_channels=in_channels,
            spatial_dims=spatial_dims,
            image_size=tuple(in_plane) if in_plane else (),
            intensity=self.policy.describe(),
            depth_axis="axial" if spatial_dims == 3 else "stored",
        )
        self._items: Optional[Dict[str, List[Dict[str, Any]]]] = None
        self._datasets: Dict[str, Dataset] = {}
        self._spec: Optional[TaskSpec] = None if kind == "prognosis" else self._base_spec

    # ------------------------------------------------------------------ spec
    @property
    def task_spec(self) -> TaskSpec:
        if self._spec is None:  # prognosis: the time grid comes from the training rows of the manifest
            from dataclasses import replace

            from data_modules.survival import survival_time_bins

            train = self._manifest()["train"]
            times = np.array([float(r["time"]) for r in train])
            events = np.array([float(r["event"]) for r in train])
            bins = survival_time_bins(times, events, self.num_time_bins, str(self.table))
            self._spec = replace(self._base_spec, time_bins=bins)
        return self._spec

    # ------------------------------------------------------------------ manifest
    def _manifest(self) -> Dict[str, List[Dict[str, Any]]]:
        if self._items is None:
            self._items = self._read_table() if self.table is not None else self._read_folder()
            for split in SPLITS:
                if not self._items[split]:
                    source = self.table or self.root
                    raise ValueError(f"VolumeDataModule({self._base_spec.name}): {source}: split '{split}' expected at least one item, found none")
        return self._items

    def _item(self, image: Path, where: str, **extra: Any) -> Dict[str, Any]:
        if not image.exists():
            raise FileNotFoundError(f"{where}: field 'image' file not found: {image}")
        item = {"image": str(image), **extra, "stamp": _stamp(image)}
        if "mask" in extra:
            mask = Path(extra["mask"])
            if not mask.exists():
                raise FileNotFoundError(f"{where}: field 'mask' file not found: {mask}")
            item["mask_path"] = str(mask)
            item["stamp"] += "|" + _stamp(mask)
        return item

    def _read_table(self) -> Dict[str, List[Dict[str, Any]]]:
        path = self.table
        if not path.is_file():
            raise FileNotFoundError(f"VolumeDataModule: manifest not found: {path} (cwd {os.getcwd()})")
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = list(reader)
        required = ("image", "split", *_TARGET_COLUMNS[self.kind])
        known = ("image", "split", "id", "mask", "label", "time", "event")
        check_column_names(header, known, path, "column", f"columns {list(required)} for kind {self.kind!r}")
        missing = [c for c in required if c not in header]
        if missing:
            extra = " (MedCL never splits a collection at random behind your back: give every row train, val or test)" if "split" in missing else ""
            raise ValueError(f"{path}: column(s) {missing} expected for kind {self.kind!r}, found columns {header}{extra}")
        items: Dict[str, List[Dict[str, Any]]] = {split: [] for split in SPLITS}
        classes = {name: i for i, name in enumerate(self._base_spec.class_names)}
        for line, row in enumerate(rows, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            where = f"{path}:{line}"
            split = row["split"]
            if split not in SPLITS:
                raise ValueError(f"{where}: field 'split' expected one of {list(SPLITS)}, found {split!r}")
            image = Path(row["image"]) if Path(row["image"]).is_absolute() else path.parent / row["image"]
            extra: Dict[str, Any] = {"id": row.get("id") or file_id(image)}
            if self.kind == "segmentation":
                mask = Path(row["mask"]) if Path(row["mask"]).is_absolute() else path.parent / row["mask"]
                extra["mask"] = str(mask)
            elif self.kind == "classification":
                label = row["label"]
                if label in classes:
                    extra["label"] = classes[label]
                elif label.isdigit() and int(label) < len(classes):
                    extra["label"] = int(label)
                else:
                    raise ValueError(f"{where}: field 'label' expected one of {list(classes)} or an index 0..{len(classes) - 1}, found {label!r}")
            else:
                for column in ("time", "event"):
                    try:
                        value = float(row[column])
                    except ValueError:
                        value = float("nan")
                    if not np.isfinite(value) or value < 0 or (column == "event" and value not in (0.0, 1.0)):
                        expected = "0 or 1" if column == "event" else "a finite number >= 0"
                        raise ValueError(f"{where}: field {column!r} expected {expected}, found {row[column]!r}")
                    extra[column] = value
            items[split].append(self._item(image, where, **extra))
        return items

    def _read_folder(self) -> Dict[str, List[Dict[str, Any]]]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"VolumeDataModule: root folder not found: {self.root} (cwd {os.getcwd()})")
        items: Dict[str, List[Dict[str, Any]]] = {}
        for split in SPLITS:
            images_dir, masks_dir = self.root / split / "images", self.root / split / "masks"
            for folder in (images_dir, masks_dir):
                if not folder.is_dir():
                    raise ValueError(f"{folder}: folder not found; a folder source is laid out as root/{{train,val,test}}/{{images,masks}}/<id>")
            images, masks = image_files_by_id(images_dir, strict=True), image_files_by_id(masks_dir, strict=True)
            for key, path in images.items():
                if key not in masks:
                    raise ValueError(f"{path}: field 'image' has no matching mask in {masks_dir}")
            for key, path in masks.items():
                if key not in images:
                    raise ValueError(f"{path}: field 'mask' has no matching image in {images_dir}")
            items[split] = [self._item(images[k], str(images[k]), id=k, mask=str(masks[k])) for k in sorted(images)]
        return items

    # ------------------------------------------------------------------ datasets
    def settings_hash(self) -> str:
        """A short hash of every setting that shapes a cached item (intensity, spacing, size, layout, kind)."""
        settings = {
            "version": _PIPELINE_VERSION, "intensity": self.policy.describe(), "spacing": self.spacing,
            "spatial_size": self.spatial_size, "spatial_dims": self._base_spec.spatial_dims, "kind": self.kind,
            "in_channels": self._base_spec.in_channels, "labels": len(self._base_spec.label_names),
        }
        return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]

    def cache_folder(self) -> Path:
        """Where ``cache: disk`` keeps this task's items: ``<cache_dir>/<task>-<settings hash>``."""
        return self.cache_root / f"{self._base_spec.name}-{self.settings_hash()}"

    def _deterministic(self) -> Any:
        # MONAI caches the output of every transform before the first random one, and only of its own
        # Transform types: plain callables are wrapped in (deterministic) Lambda transforms
        from monai.transforms import Compose, Lambda, Spacingd

        spec = self._base_spec
        steps: List[Any] = [Lambda(_Load(self.policy, spec.spatial_dims, spec.in_channels))]
        if self.spacing is not None:
            keys = ["image", "mask"] if self.kind == "segmentation" else ["image"]
            steps.append(Spacingd(keys=keys, pixdim=self.spacing, mode=["bilinear", "nearest"][: len(keys)], dtype=np.float32))
        steps.append(Lambda(_Finish(self.kind, spec.spatial_dims, len(spec.label_names))))
        if self.spatial_size is not None:
            steps.append(Lambda(_Sized(self.spatial_size)))
        return Compose(steps)

    def setup(self, stage: Optional[str] = None) -> None:
        """Read and check the manifest, and build the (lazy) datasets; no image is read here."""
        if self._datasets:
            return
        from monai.data import CacheDataset, Dataset as MonaiDataset, PersistentDataset

        manifest = self._manifest()
        _ = self.task_spec
        transform = self._deterministic()
        for split in SPLITS:
            data = manifest[split]
            if self.cache == "disk":
                folder = self.cache_folder() / split
                folder.mkdir(parents=True, exist_ok=True)
                base: Dataset = PersistentDataset(data, transform=transform, cache_dir=folder)
            elif self.cache == "memory":
                first = transform(dict(data[0]))
                nbytes = sum(v.element_size() * v.nelement() for v in first.values() if isinstance(v, torch.Tensor))
                cache_num = max(1, int(self.cache_memory_gb * 1e9 // max(nbytes, 1)))
                base = CacheDataset(data, transform=transform, cache_num=cache_num, num_workers=0, progress=False)
            else:
                base = MonaiDataset(data, transform=transform)
            flips = _Flip(self._base_spec.spatial_dims, self.kind == "segmentation") if self.augment and split == "train" else None
            self._datasets[split] = _Augmented(base, flips)

    def dataset(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"VolumeDataModule({self.name}): split expected one of {list(SPLITS)}, found {split!r}")
        if not self._datasets:
            raise RuntimeError(f"VolumeDataModule({self.name}): call setup() before asking for datasets")
        return self._datasets[split]

    def ids(self, split: str) -> List[str]:
        """The item ids of ``split``, in order."""
        return [item["id"] for item in self._manifest()[split]]
