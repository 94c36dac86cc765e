"""Images to predict on, named on the command line: a folder of image files or an ``.npz``."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Union

import numpy as np
import torch
from torch.utils.data import Dataset

from data_modules.io import file_id, list_image_files, open_npz, read_image
from framework.specs import TaskSpec

__all__ = ["PredictionSource"]

#: array names tried, in order, for the images and (optional) known targets of an ``.npz``
_NPZ_IMAGES = ("images", "test_images")
_NPZ_TARGETS = {"classification": ("labels", "test_labels"), "multilabel": ("labels", "test_labels"), "segmentation": ("masks",)}


class PredictionSource(Dataset):
    """Images for ``medcl predict``, checked against the task they are predicted for.

    * a **folder** of ``.png``/``.jpg``/``.nii``/``.nii.gz`` files (read with MONAI, see
      :func:`data_modules.io.read_image`); items carry the file id, and images may differ in size
      (the loader then uses batches of one);
    * an **.npz** with ``images`` (or a MedMNIST file's ``test_images``), uint8 ``(N, H, W[, C])``
      or ``(N, D, H, W)`` volumes, and optionally the known targets of the task's kind, passed
      through to the prediction files: ``labels`` (or ``test_labels``) for classification,
      ``masks`` for segmentation, ``time`` and ``event`` for prognosis.

    Items: ``{"image": FloatTensor, "id": str[, "target": Tensor]}``.

    Args:
        path: the folder or ``.npz`` file.
        spec: the task whose head will predict.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on an empty folder, an unreadable file, or images whose channels or
            dimensionality do not fit the task (a volume given to a 2D-only task, say); messages
            name the file.
    """

    def __init__(self, path: Union[str, Path], spec: TaskSpec) -> None:
        self.path = Path(path)
        self.spec = spec
        if not self.path.exists():
            raise FileNotFoundError(f"predict: file or folder not found: {self.path}")
        self.targets: Optional[torch.Tensor] = None
        if self.path.is_dir():
            self.files = list_image_files(self.path)
            if not self.files:
                raise ValueError(f"predict: folder {self.path} holds no image files (.png, .jpg, .jpeg, .nii, .nii.gz)")
            self.ids = [file_id(f) for f in self.files]
            self.images: List[np.ndarray] = [self._check(read_image(f), f) for f in self.files]
        else:
            self._load_npz()
        self.same_size = len({tuple(im.shape) for im in self.images}) == 1

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
        if self.targets is not None:
            item["target"] = self.targets[index]
        return item
