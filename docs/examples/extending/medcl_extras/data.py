"""A data module for the "regression" kind: BloodMNIST images with a SEMI-SYNTHETIC target, each
image's mean brightness in [0, 1] (derived from the real image; it is not a clinical label)."""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, Optional

import medcl_extras  # noqa: F401  (registers the "regression" kind before its TaskSpec is made)
from torch.utils.data import Dataset

from data_modules import MedMNISTDataModule


class _Brightness(Dataset):
    def __init__(self, items: Dataset) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = dict(self.items[index])
        item["target"] = item["image"].float().mean() / 255.0
        return item


class BloodBrightness(MedMNISTDataModule):
    """BloodMNIST as a regression task (kind "regression").

    Args:
        data_dir: folder with ``bloodmnist.npz``.
        batch_size: training batch size.
        train_subset, val_subset, test_subset: seeded subset sizes (``None``: the whole split).
        task_name: the task's name.
    """

    def __init__(
        self, data_dir: str = "data/demo/medmnist", batch_size: int = 64, train_subset: Optional[int] = None,
        val_subset: Optional[int] = None, test_subset: Optional[int] = None, task_name: str = "blood_brightness",
    ) -> None:
        super().__init__(
            flag="bloodmnist", data_dir=data_dir, batch_size=batch_size, train_subset=train_subset, val_subset=val_subset,
            test_subset=test_subset, task_name=task_name,
        )

    @property
    def task_spec(self):
        # the file's labels are still checked against Blood's 8 classes; the task is the regression
        return replace(super().task_spec, kind="regression", class_names=())

    def dataset(self, split: str) -> Dataset:
        return _Brightness(super().dataset(split))
