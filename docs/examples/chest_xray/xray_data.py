"""A user's own modality for MedCL: chest X-rays as one DataModule (the worked example of
docs/adding_a_modality.md).

It reads arrays in the MedMNIST layout (``{train,val,test}_images`` uint8 ``(N, H, W)`` and
``{train,val,test}_labels`` ``(N, 1)``), e.g. ``../shared/data/medmnist/pneumoniamnist.npz``.
Copy this file, change ``_read`` to read your data, and change the ``TaskSpec``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from data_modules import DomainDataModule
from data_modules.base import SPLITS
from framework.core.specs import TaskSpec


class _ImageLabelDataset(Dataset):
    """Items ``{"image": uint8 tensor [1, H, W], "target": LongTensor[]}``: 8-bit images stay uint8 (the
    backbone divides by 255), so a replay buffer stores them at a quarter of float32's size."""

    def __init__(self, images: np.ndarray, labels: np.ndarray) -> None:
        self.images = torch.from_numpy(images).unsqueeze(1)  # (N, 1, H, W) uint8
        self.labels = torch.from_numpy(labels.reshape(-1).astype(np.int64))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        return {"image": self.images[index].clone(), "target": self.labels[index]}


class ChestXrayDataModule(DomainDataModule):
    """Pneumonia vs normal on paediatric chest X-rays.

    Args:
        file: an ``.npz`` with ``{split}_images`` ``(N, H, W)`` uint8 and ``{split}_labels`` ``(N, 1)``.
        task_name: the task's name in the model (batch key, head, metrics, checkpoint).
        class_names: one name per label value, in label order.
        train_subset: use only the first this many training images (``None`` = all).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.

    Raises:
        ValueError: on bad arguments, or (in ``setup``) on a file without the expected fields.
        FileNotFoundError: in ``setup``, if ``file`` does not exist.
    """

    def __init__(
        self,
        file: str = "../shared/data/medmnist/pneumoniamnist.npz",
        task_name: str = "chest_xray",
        class_names: List[str] = ("normal", "pneumonia"),
        train_subset: Optional[int] = None,
        batch_size: int = 64,
        eval_batch_size: Optional[int] = None,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size)
        if train_subset is not None and (not isinstance(train_subset, int) or train_subset < 1):
            raise ValueError(f"ChestXrayDataModule: train_subset expected None or a positive integer, found {train_subset!r}")
        self.file = Path(file)
        self.train_subset = train_subset
        # Everything downstream (head, prompts, metrics, checkpoint) is derived from this spec.
        self._spec = TaskSpec(
            name=task_name,
            kind="classification",
            modality="x-ray",                   # a modality new to the model gets its own LoRA (if `lora` is set)
            class_names=tuple(class_names),
            prompt_template="a chest x-ray showing {}",
            in_channels=1,                      # grayscale; 2+ channels would bring a new patch embedding
            spatial_dims=2,
        )
        self._datasets: Dict[str, Dataset] = {}

    @property
    def task_spec(self) -> TaskSpec:
        return self._spec

    def _read(self, split: str, archive) -> Dataset:
        images, labels = archive[f"{split}_images"], archive[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise ValueError(f"{self.file}: field '{split}_images' expected uint8 (N, H, W), found {images.dtype} {images.shape}")
        if labels.min() < 0 or labels.max() >= len(self._spec.class_names):
            raise ValueError(
                f"{self.file}: field '{split}_labels' expected values in [0, {len(self._spec.class_names) - 1}], "
                f"found [{labels.min()}, {labels.max()}]"
            )
        if split == "train" and self.train_subset is not None:
            images, labels = images[: self.train_subset], labels[: self.train_subset]
        return _ImageLabelDataset(images, labels)

    def setup(self, stage: Optional[str] = None) -> None:
        if self._datasets:
            return
        if not self.file.is_file():
            raise FileNotFoundError(f"ChestXrayDataModule: file not found: {self.file}")
        with np.load(self.file) as archive:
            missing = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels") if f"{s}_{k}" not in archive.files]
            if missing:
                raise ValueError(f"{self.file}: missing field(s) {missing}")
            self._datasets = {split: self._read(split, archive) for split in SPLITS}

    def dataset(self, split: str) -> Dataset:
        return self._datasets[split]
