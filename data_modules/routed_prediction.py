"""Images to predict on without a task: a folder (or ``.npz``) of images from any learned source.

``medcl predict --data.init_args.predict_path <folder>`` with no ``predict_task``, on a model with a
task router (``model.init_args.router``): each image is read once and served twice over, as the
router reads it (intensity ``auto``, its own channels and size) and as every task that can read it
(that task's intensity policy, channel count and dimensionality) would; the model routes the image
and predicts every task of the source it names (framework/paradigms/steps.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Mapping, Sequence, Union

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from data_modules.io import IMAGE_SUFFIXES, list_image_files, open_npz, read_array_with_geometry, scale_intensities, to_axial, unsupported_files
from data_modules.prediction import _first, unique_ids
from framework.core.data_protocol import ROUTED_KEY
from framework.core.specs import TaskSpec

__all__ = ["RoutedPredictionSource", "routed_collate"]


def _fits(spec: TaskSpec, array: np.ndarray) -> bool:
    return array.ndim - 1 == spec.spatial_dims and array.shape[0] == spec.in_channels


class RoutedPredictionSource(Dataset):
    """Every image of a folder (or an ``.npz``'s ``images`` / ``test_images``), with a view per task.

    Items: ``{"image": the router's view (C, [D,] H, W) float in [0, 1], "views": {task: view},
    "id": str}``; a task whose channels or dimensionality the image does not have gets no view
    (its head is never run on it).

    Args:
        path: the folder or ``.npz`` file.
        specs: the tasks of the model, by name.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: on an empty folder or an unreadable file (naming it), or an image no task can read.
    """

    def __init__(self, path: Union[str, Path], specs: Mapping[str, TaskSpec]) -> None:
        self.path = Path(path)
        self.specs = dict(specs)
        if not self.path.exists():
            raise FileNotFoundError(f"predict: file or folder not found: {self.path}")
        self.items: List[Dict[str, Any]] = []
        if self.path.is_dir():
            files = list_image_files(self.path)
            skipped = unsupported_files(self.path)
            if not files:
                raise ValueError(f"predict: folder {self.path} expected image files ({', '.join(IMAGE_SUFFIXES)}), found none")
            if skipped:
                rank_zero_warn(f"predict: skipped {len(skipped)} file(s) with unsupported suffixes in {self.path}: {_first([f.name for f in skipped])}")
            for f, ident in zip(files, unique_ids(files)):
                array, _ = read_array_with_geometry(f)
                self.items.append(self._item(ident, f.name, lambda policy, a=array, f=f: scale_intensities(a, f, policy)))
        else:
            with open_npz(self.path) as archive:
                key = next((k for k in ("images", "test_images") if k in archive.files), None)
                if key is None:
                    raise ValueError(f"{self.path}: expected an array named 'images' or 'test_images', found {sorted(archive.files)}")
                raw = archive[key]
            if raw.dtype != np.uint8:
                raise ValueError(f"{self.path}: field '{key}' expected dtype uint8, found {raw.dtype}")
            for i, image in enumerate(raw):
                channel_last = image.ndim == 3 and image.shape[-1] in (3, 4)
                array = (np.moveaxis(image, -1, 0) if channel_last else image[None]).astype(np.float32) / 255.0
                self.items.append(self._item(str(i), f"{self.path.name}[{i}]", lambda policy, a=array: a))
        unread = [item["name"] for item in self.items if not item["views"]]
        if unread:
            wanted = sorted({(s.in_channels, s.spatial_dims) for s in self.specs.values()})
            raise ValueError(
                f"predict: {len(unread)} image(s) in {self.path} fit no task of the model (tasks take (channels, spatial dims) "
                f"{wanted}): {_first(unread)}"
            )

    def _item(self, ident: str, name: str, scaled) -> Dict[str, Any]:
        view = np.ascontiguousarray(scaled("auto"))
        views = {}
        for task, spec in self.specs.items():
            array = scaled(spec.intensity) if spec.intensity != "auto" else view
            if spec.depth_axis == "axial" and array.ndim == 4:
                array = to_axial(array)
            if _fits(spec, array):
                views[task] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
        return {"image": torch.from_numpy(view.astype(np.float32)), "views": views, "id": ident, "name": name}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.items[index]
        return {"image": item["image"], "views": dict(item["views"]), "id": item["id"]}


def routed_collate(items: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """One image per batch (images of several sources differ in size and channels)."""
    if len(items) != 1:
        raise ValueError(f"routed prediction: expected batches of one image, found {len(items)}")
    (item,) = items
    return {ROUTED_KEY: {"image": item["image"][None], "views": {t: v[None] for t, v in item["views"].items()}, "id": [item["id"]]}}
