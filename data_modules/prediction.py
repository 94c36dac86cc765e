"""Images to predict on, named on the command line: a folder of image files or an ``.npz``."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from data_modules.io import (
    IMAGE_SUFFIXES, file_id, list_image_files, open_npz, read_array_with_geometry, scale_intensities, to_axial, unsupported_files,
)
from framework.core.specs import TaskSpec

__all__ = ["PredictionSource", "unique_ids"]

#: array names tried, in order, for the images and (optional) known targets of an ``.npz``
_NPZ_IMAGES = ("images", "test_images")
_NPZ_TARGETS = {"classification": ("labels", "test_labels"), "multilabel": ("labels", "test_labels"), "segmentation": ("masks",)}


def _first(names: Sequence[str], limit: int = 5) -> str:
    return ", ".join(names[:limit]) + (f", ... ({len(names) - limit} more)" if len(names) > limit else "")


def unique_ids(files: Sequence[Path]) -> List[str]:
    """One id per file: the file id (:func:`data_modules.io.file_id`, the name without its image
    ending) where no other file of ``files`` has the same id in any letter case, else the whole
    file name (``case1.png``, ``case1.jpg``, ``case1.PNG``).

    The ids are unique, so the mask files named after them (``masks/<id>.png``) are too; names that
    differ only in letter case (``case1.png`` / ``case1.PNG``) stay apart on a case-sensitive file
    system only.
    """
    ids = [file_id(f) for f in files]
    while True:  # a whole name may clash with another file's id (a.png + a.png.png): repeat until none does
        groups: Dict[str, List[int]] = {}
        for i, value in enumerate(ids):
            groups.setdefault(value.lower(), []).append(i)
        clashing = [i for members in groups.values() if len(members) > 1 for i in members if ids[i] != files[i].name]
        if not clashing:
            return ids
        for i in clashing:
            ids[i] = files[i].name


class PredictionSource(Dataset):
    """Images for ``medcl predict``, checked against the task they are predicted for.

    * a **folder** of ``.png``/``.jpg``/``.nii``/``.nii.gz``/``.dcm`` files and DICOM series
      (sub-folders of ``.dcm`` files), read with MONAI (see :func:`data_modules.io.read_image`) and
      scaled with the intensity policy the task was trained with (``TaskSpec.intensity``); items
      carry the file id (:func:`unique_ids`: the name without its ending, or the whole file name
      where two files share that), and images may differ in size (the loader then uses batches of
      one).  Files with other endings (``.txt``) are skipped with one warning that counts and names them;
    * an **.npz** with ``images`` (or a MedMNIST file's ``test_images``), uint8 ``(N, H, W[, C])``
      or ``(N, D, H, W)`` volumes, and optionally the known targets of the task's kind, passed
      through to the prediction files: ``labels`` (or ``test_labels``) for classification,
      ``masks`` for segmentation, ``time`` and ``event`` for prognosis.

    Items: ``{"image": FloatTensor, "id": str[, "target": Tensor]}``.

    With ``input_size``, one warning counts the images whose (in-plane) size differs from it: the
    backbone resizes them (a segmentation head resizes its masks back to each image's size).

    Args:
        path: the folder or ``.npz`` file.
        spec: the task whose head will predict.
        input_size: ``(H, W)`` the model's image tower takes (``backbone.image_size``), or ``None``
            to say nothing about resizing.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on an empty folder, an unreadable file, or images whose channels or
            dimensionality do not fit the task (a volume given to a 2D-only task, say); messages
            name the file.
    """

    def __init__(self, path: Union[str, Path], spec: TaskSpec, input_size: Optional[Sequence[int]] = None) -> None:
        self.path = Path(path)
        self.spec = spec
        if not self.path.exists():
            raise FileNotFoundError(f"predict: file or folder not found: {self.path}")
        self.targets: Optional[torch.Tensor] = None
        self.names: List[str] = []
        if self.path.is_dir():
            self.files = list_image_files(self.path)
            skipped = unsupported_files(self.path)
            suffixes = sorted({f.suffix or "(no suffix)" for f in skipped})
            plural = ("s" if len(skipped) != 1 else "", "es" if len(suffixes) != 1 else "")
            skipped_text = (
                f"{len(skipped)} file{plural[0]} with unsupported suffix{plural[1]} {suffixes}: {_first([f.name for f in skipped])}"
            )
            if not self.files:
                raise ValueError(
                    f"predict: folder {self.path} expected image files ({', '.join(IMAGE_SUFFIXES)}), found none"
                    + (f" (only {skipped_text})" if skipped else "")
                )
            if skipped:
                rank_zero_warn(
                    f"predict: skipped {skipped_text} in {self.path} (MedCL reads {', '.join(IMAGE_SUFFIXES)}, and DICOM "
                    f"series as sub-folders of .dcm files)"
                )
            self.ids = unique_ids(self.files)
            renamed = [i for f, i in zip(self.files, self.ids) if i != file_id(f)]
            if renamed:
                rank_zero_warn(
                    f"predict: {len(renamed)} files in {self.path} share a name without their ending, so their ids (and "
                    f"mask file names) are their whole file names: {_first(renamed)}"
                )
            self.names = [f.name for f in self.files]
            self.images: List[np.ndarray] = []
            #: a NIfTI input's affine as read (RAS, data_modules.io): its predicted mask is written on the same grid
            self.affines: List[Optional[np.ndarray]] = []
            for f in self.files:
                array, geometry = read_array_with_geometry(f)
                # the intensity policy the task was trained with (TaskSpec.intensity), never another one
                image = self._check(scale_intensities(array, f, spec.intensity), f)
                if spec.depth_axis == "axial":  # as the task was trained: axial slices (TaskSpec.depth_axis)
                    image = to_axial(image)
                self.images.append(np.ascontiguousarray(image))
                self.affines.append(None if geometry is None else geometry.affine)
        else:
            self._load_npz()
            self.affines = [None] * len(self.images)
        self.same_size = len({tuple(im.shape) for im in self.images}) == 1
        if input_size is not None:
            self._report_resizing(tuple(int(n) for n in input_size))

    def _report_resizing(self, input_size: Tuple[int, ...]) -> None:
        """One warning counting the images whose in-plane size is not ``input_size`` (the backbone resizes them)."""
        other = [i for i, image in enumerate(self.images) if tuple(image.shape[-2:]) != input_size]
        if not other:
            return
        sizes = sorted({tuple(self.images[i].shape[-2:]) for i in other})
        what = "volumes' slices" if self.spec.spatial_dims == 3 else "images"
        example = self.names[other[0]] if self.names else f"{self.path.name}[{other[0]}]"
        masks = "; predicted masks are resized back to each image's size" if self.spec.kind == "segmentation" else ""
        rank_zero_warn(
            f"predict: resized {len(other)} of {len(self.images)} {what} in {self.path} from {_first([str(s) for s in sizes], 3)} "
            f"(first: {example}) to the model input {input_size} of task '{self.spec.name}'{masks}; an image of another "
            f"aspect ratio is stretched"
        )

    def _load_npz(self) -> None:
        with open_npz(self.path) as archive:
            key = next((k for k in _NPZ_IMAGES if k in archive.files), None)
            if key is None:
                raise ValueError(f"{self.path}: expected an array named one of {list(_NPZ_IMAGES)}, found {sorted(archive.files)}")
            raw = archive[key]
            if self.spec.kind == "prognosis":
                target_key = "time+event" if {"time", "event"} <= set(archive.files) else None
                targets = np.stack([archive["time"], archive["event"]], axis=1).astype(np.float32) if target_key else None
            else:
                target_key = next((k for k in _NPZ_TARGETS.get(self.spec.kind, ()) if k in archive.files), None)
                targets = archive[target_key] if target_key else None
        if raw.dtype != np.uint8:
            raise ValueError(f"{self.path}: field '{key}' expected dtype uint8, found {raw.dtype}")
        channel_last = raw.ndim == self.spec.spatial_dims + 2
        self.images = []
        for i, image in enumerate(raw):
            array = (np.moveaxis(image, -1, 0) if channel_last else image[None]).astype(np.float32) / 255.0
            self.images.append(self._check(array, f"{self.path} field '{key}'[{i}]"))
        self.ids = [str(i) for i in range(len(raw))]
        if targets is not None:
            if len(targets) != len(raw):
                raise ValueError(f"{self.path}: field '{target_key}' has {len(targets)} entries but '{key}' has {len(raw)}")
            if targets.ndim == 2 and targets.shape[1] == 1:
                targets = targets[:, 0]
            self.targets = torch.as_tensor(targets if self.spec.kind == "prognosis" else targets.astype(np.int64))

    def _check(self, array: np.ndarray, where) -> np.ndarray:
        spatial = array.ndim - 1
        if spatial != self.spec.spatial_dims:
            kind = "a volume" if spatial == 3 else "a 2D image"
            only = "2D-only" if self.spec.spatial_dims == 2 else "for volumes (spatial_dims=3)"
            raise ValueError(
                f"{where}: holds {kind} of shape {tuple(array.shape[1:])}, but task '{self.spec.name}' is {only}"
            )
        if array.shape[0] != self.spec.in_channels:
            raise ValueError(
                f"{where}: expected {self.spec.in_channels} channel(s) for task '{self.spec.name}', found {array.shape[0]}"
            )
        return array

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, object]:
        item: Dict[str, object] = {"image": torch.from_numpy(self.images[index]), "id": self.ids[index]}
        if any(a is not None for a in self.affines):  # every item of a folder with NIfTI files has one (identity for others)
            affine = self.affines[index]
            item["affine"] = torch.as_tensor(np.eye(4) if affine is None else affine, dtype=torch.float64)
        if self.targets is not None:
            item["target"] = self.targets[index]
        return item
