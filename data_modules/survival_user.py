"""The survival data module of your own data: :class:`SurvivalDataModule` (an image folder plus a
survival CSV, or one ``.npz`` file); its file readers are in :mod:`data_modules.survival_tables`."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from data_modules.base import SPLITS
from data_modules.intensity import parse_intensity
from data_modules.io import open_npz, read_array, scale_intensities, to_axial
from data_modules.survival_base import SurvivalImageDataset, _SurvivalDomain, check_int_arg
from data_modules.survival_tables import assign_splits, match_files, read_csv_table, read_npz_table
from framework.core.specs import TaskSpec

__all__ = ["SurvivalDataModule"]


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
        check_int_arg(owner, "split_seed", split_seed, 0)
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
            ids, times, events, splits = (
                read_npz_table(self.images_path, self._base_spec) if self.is_npz else read_csv_table(self.table_path, self.images_path)
            )
            files: List[Optional[Path]] = [None] * len(ids) if self.is_npz else match_files(self.images_path, ids, self.table_path)
            split_index = assign_splits(
                splits, len(ids), self._source(), self.is_npz, self.val_fraction, self.test_fraction, self.split_seed
            )
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
