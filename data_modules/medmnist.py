"""MedMNIST domains read from the official ``.npz`` files.

Every official file holds ``{train,val,test}_images`` (uint8, ``(N, H, W)`` grayscale or
``(N, H, W, 3)`` RGB) and ``{train,val,test}_labels`` (``(N, 1)`` class indices, or ``(N, K)``
0/1 for the multi-label ChestMNIST).  Files are validated when loaded; anything unexpected raises
an error naming the file and the field.  Images are served as uint8 (value ``v`` means ``v / 255``);
the backbone converts them to float (see :mod:`data_modules.base`).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from data_modules.base import SPLITS, DomainDataModule, check_subset_sizes, subset_indices
from data_modules.io import declared_image_size, npz_member_shape, open_npz
from data_modules.medmnist_info import MEDMNIST_INFO, official_url
from framework.core.specs import TaskSpec

__all__ = ["MedMNISTDataModule", "ArrayImageDataset", "load_medmnist_npz"]

log = logging.getLogger(__name__)


def memory_mapped_member(path: Path, key: str, cache_dir: Path) -> np.ndarray:
    """Array ``key`` of the ``.npz`` at ``path`` as a read-only memory map, converted once.

    An ``.npz`` member is an ``.npy`` file inside a zip archive: it is copied out byte by byte
    (``zipfile``: decompressed on the fly, never held in memory) into
    ``<cache_dir>/<file name>-<size>-<mtime>/<key>.npy`` the first time, then opened with
    ``numpy.load(mmap_mode="r")``: pages are read from disk as items are served.  numpy cannot
    memory-map inside a zip, hence the one-time copy; a changed file gets a new folder.

    Raises:
        ValueError: naming the file and the member, if it is missing or not a readable array.
    """
    import shutil
    import zipfile

    stat = path.stat()
    folder = Path(cache_dir) / f"{path.name}-{stat.st_size}-{stat.st_mtime_ns}"
    target = folder / f"{key}.npy"
    if not target.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        # one partial file per process: ranks of a DDP run convert at the same time, and a shared
        # partial file opened by a second rank would be truncated under the first one's writes
        partial = target.with_suffix(f".npy.{os.getpid()}.partial")
        try:
            with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member, open(partial, "wb") as out:
                shutil.copyfileobj(member, out, length=16 * 2**20)
        except KeyError:
            partial.unlink(missing_ok=True)
            raise ValueError(f"{path}: no array {key!r} to memory-map") from None
        partial.replace(target)  # atomic: a half-written copy is never used
    try:
        return np.load(target, mmap_mode="r", allow_pickle=False)
    except ValueError as err:
        raise ValueError(f"{path}: array {key!r} cannot be memory-mapped ({err})") from None


class ArrayImageDataset(Dataset):
    """Images held in memory (or memory-mapped) as uint8 ``(N, H, W[, C])`` with their targets.

    Items are ``{"image": ByteTensor[C, H, W] (uint8, 0..255; the backbone divides by 255),
    "target": LongTensor}``; with ``spatial_dims=3`` the arrays are ``(N, D, H, W)`` volumes and
    images ``[1, D, H, W]``.  Items are copies: callers may modify them in place.  (Arrays of
    another dtype are served as float32 and must already lie in ``[0, 1]``.)  With ``indices``,
    item ``i`` is image ``indices[i]`` (a subset of a memory map without copying it).
    """

    def __init__(self, images: np.ndarray, targets: np.ndarray, spatial_dims: int = 2, indices: Optional[np.ndarray] = None) -> None:
        count = len(images) if indices is None else len(indices)
        if count != len(targets):
            raise ValueError(f"ArrayImageDataset: {count} images but {len(targets)} targets")
        self.images = images
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)
        self.targets = torch.as_tensor(np.asarray(targets, dtype=np.int64))
        self.spatial_dims = spatial_dims

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        row = index if self.indices is None else int(self.indices[index])
        image = torch.from_numpy(np.array(self.images[row]))  # a copy (a memory map's page read here)
        image = image.unsqueeze(0) if image.ndim == self.spatial_dims else image.movedim(-1, 0)
        # copies (uint8 stays uint8), so callers may modify items without touching the stored data
        dtype = torch.uint8 if image.dtype == torch.uint8 else torch.float32
        image = image.to(dtype, copy=True, memory_format=torch.contiguous_format)
        return {"image": image, "target": self.targets[index]}


def load_medmnist_npz(path: Path, num_classes: int, multilabel: bool = False, spatial_dims: int = 2,
                      mmap_dir: Optional[Path] = None) -> Dict[str, np.ndarray]:
    """Load and validate an official-format MedMNIST ``.npz`` file.

    With ``mmap_dir``, the image arrays are memory-mapped (:func:`memory_mapped_member`, converted
    once) instead of read into memory; labels are always read (they are small).

    Args:
        path: the ``.npz`` file.
        num_classes: number of classes (labels must lie in ``[0, num_classes - 1]``).
        multilabel: labels are ``(N, num_classes)`` 0/1 vectors instead of class indices.
        spatial_dims: 2 for images ``(N, H, W[, 3])``, 3 for MedMNIST 3D volumes ``(N, D, H, W)``.

    Returns:
        ``{"train_images": ..., "train_labels": ..., ...}`` with labels as ``(N,)`` (or ``(N, K)``).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on missing keys, a volume where images are expected (or the reverse), wrong
            dtypes or shapes, mismatched counts or labels out of range.  Messages name the file and
            the field.
    """
    if not path.is_file():
        raise FileNotFoundError(f"MedMNIST file not found: {path}")
    with open_npz(path) as archive:
        expected = [f"{s}_{k}" for s in SPLITS for k in ("images", "labels")]
        missing = [k for k in expected if k not in archive.files]
        if missing:
            raise ValueError(
                f"{path}: missing key(s) {missing}; an official MedMNIST file has {expected}, this one has {sorted(archive.files)}"
            )
        arrays = {k: (memory_mapped_member(path, k, mmap_dir) if mmap_dir is not None and k.endswith("_images") else archive[k])
                  for k in expected}
    for split in SPLITS:
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        field = f"{split}_images"
        if images.dtype != np.uint8:
            raise ValueError(f"{path}: field '{field}' expected dtype uint8, found {images.dtype}")
        if spatial_dims == 2 and images.ndim == 4 and images.shape[-1] not in (1, 3):
            raise ValueError(
                f"{path}: field '{field}' has shape {images.shape}, a stack of 3D volumes (MedMNIST 3D), but the task is "
                f"2D-only; use a 3D flag (e.g. adrenalmnist3d) for volumes"
            )
        if spatial_dims == 3 and images.ndim != 4:
            raise ValueError(f"{path}: field '{field}' expected 3D volumes of shape (N, D, H, W) for a 3D task, found {images.shape}")
        if images.ndim not in (3, 4):
            raise ValueError(f"{path}: field '{field}' expected shape (N, H, W) or (N, H, W, 3), found {images.shape}")
        lfield = f"{split}_labels"
        if len(labels) != len(images):
            raise ValueError(
                f"{path}: field '{lfield}' has {len(labels)} samples but '{field}' has {len(images)}; counts must match"
            )
        if not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{path}: field '{lfield}' expected integer labels, found dtype {labels.dtype}")
        if multilabel:
            if labels.ndim != 2 or labels.shape[1] != num_classes:
                raise ValueError(f"{path}: field '{lfield}' expected shape (N, {num_classes}), found {labels.shape}")
            if labels.size and (labels.min() < 0 or labels.max() > 1):
                raise ValueError(f"{path}: field '{lfield}' expected 0/1 values, found range [{labels.min()}, {labels.max()}]")
        else:
            if labels.ndim == 2 and labels.shape[1] == 1:
                labels = labels[:, 0]
            if labels.ndim != 1:
                raise ValueError(f"{path}: field '{lfield}' expected shape (N,) or (N, 1), found {labels.shape}")
            if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
                raise ValueError(
                    f"{path}: field '{lfield}' has labels outside [0, {num_classes - 1}] ({num_classes} classes): "
                    f"found min {labels.min()}, max {labels.max()}"
                )
            arrays[lfield] = labels
    channels = {arrays[f"{s}_images"].shape[-1] if arrays[f"{s}_images"].ndim == 2 + spatial_dims else 1 for s in SPLITS}
    if len(channels) > 1:
        raise ValueError(f"{path}: splits disagree on the number of channels: {sorted(channels)}")
    return arrays


class MedMNISTDataModule(DomainDataModule):
    """A MedMNIST domain (2D images or 3D volumes) from an official ``.npz`` file.

    3D flags (``adrenalmnist3d``, ``vesselmnist3d`` ...) give ``spatial_dims: 3`` tasks whose items
    are ``[1, D, H, W]`` volumes; the backbone encodes them slice by slice.

    Class names, modality and prompt template come from the official label names of ``flag``
    (see :mod:`data_modules.medmnist_info`); any of them can be overridden, and must be given for a
    file whose flag MedMNIST does not know.

    Args:
        flag: MedMNIST flag, e.g. ``"bloodmnist"``; the file is ``<data_dir>/<flag>.npz``.
        data_dir: folder holding the file.
        file: explicit path to the ``.npz`` file (overrides ``data_dir``).
        task_name: task name in the stream (defaults to ``flag``).
        class_names: override the class names used for prompts.
        prompt_template: override the prompt template (one ``{}``).
        modality: override the modality.
        spatial_dims: override 2 (images) / 3 (volumes), needed for your own 3D file under a new flag.
        image_size: the in-plane size the model runs this task at (``TaskSpec.image_size``); default:
            the size the file's images come in (28, 64, 128 or 224 px), so no image is silently shrunk.
        train_subset: use a random subset of this many training images (``None`` = all).
        val_subset: same for validation.
        test_subset: same for test.
        subset_seed: seed of the subset draw (the same seed gives the same subset in every run).
        download: if the file is missing, download the official file from Zenodo and check its MD5
            (needs internet; never used in tests).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader workers.
        drop_last: drop the last, incomplete training batch of an epoch (see :class:`DomainDataModule`).
        memory_map: serve images from a memory map instead of reading every split into memory: the
            file's image arrays are copied once, uncompressed, into ``cache_dir`` and pages are
            read as items are served (for MedMNIST+ 128/224-px files of several GB).
        cache_dir: where ``memory_map`` keeps its copies (default ``~/.cache/medcl/mmap``).

    Raises:
        ValueError: on an unknown flag without ``class_names``, or invalid subset sizes.

    Example::

        dm = MedMNISTDataModule("bloodmnist", data_dir="../shared/data/medmnist", train_subset=2000)
        dm.setup("fit")
        batch = next(iter(dm.loader("train")))   # {"bloodmnist": {"image": uint8 (64, 3, 28, 28), "target": (64,)}}
    """

    def __init__(
        self,
        flag: str,
        data_dir: str = "data/demo/medmnist",
        file: Optional[str] = None,
        task_name: Optional[str] = None,
        class_names: Optional[List[str]] = None,
        prompt_template: Optional[str] = None,
        modality: Optional[str] = None,
        spatial_dims: Optional[int] = None,
        image_size: Optional[int] = None,
        train_subset: Optional[int] = None,
        val_subset: Optional[int] = None,
        test_subset: Optional[int] = None,
        subset_seed: int = 0,
        download: bool = False,
        batch_size: int = 64,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        drop_last: bool = False,
        memory_map: bool = False,
        cache_dir: Optional[str] = None,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, drop_last=drop_last)
        if not isinstance(memory_map, bool):
            raise ValueError(f"MedMNISTDataModule({flag}): memory_map expected true or false, found {memory_map!r}")
        self.memory_map = memory_map
        self.mmap_dir = Path(cache_dir).expanduser() if cache_dir else Path.home() / ".cache" / "medcl" / "mmap"
        info = MEDMNIST_INFO.get(flag)
        if info is None and not class_names:
            raise ValueError(
                f"MedMNISTDataModule: flag {flag!r} is not an official MedMNIST flag ({sorted(MEDMNIST_INFO)}); "
                f"pass class_names (and prompt_template, modality) for your own file"
            )
        if info is not None and class_names and len(class_names) != len(info["labels"]):
            raise ValueError(
                f"MedMNISTDataModule({flag}): class_names has {len(class_names)} names, but {flag} has {len(info['labels'])} classes "
                f"({list(info['labels'])}); give one name per class"
            )
        subsets = check_subset_sizes(f"MedMNISTDataModule({flag})", train_subset, val_subset, test_subset)
        info = info or {}
        self.flag = flag
        self.path = Path(file) if file else Path(data_dir) / f"{flag}.npz"
        self.download = bool(download)
        self.subsets = subsets
        self.subset_seed = int(subset_seed)
        self._spec = TaskSpec(
            name=task_name or flag,
            domain=flag if (task_name or flag) != flag else "",  # a renamed task still reads the flag's images
            kind=info.get("kind", "classification"),
            modality=modality or info.get("modality", "unknown"),
            class_names=tuple(class_names or info["labels"]),
            prompt_template=prompt_template or info.get("prompt", "a medical image of {}"),
            in_channels=info.get("channels", 3),
            spatial_dims=spatial_dims or info.get("spatial_dims", 2),
            image_size=declared_image_size(image_size, self._file_image_size(spatial_dims or info.get("spatial_dims", 2)), f"MedMNISTDataModule({flag})"),
        )
        self.md5 = info.get("md5")
        self._names_given = bool(class_names)
        self._datasets: Dict[str, ArrayImageDataset] = {}

    def _file_image_size(self, spatial_dims: int) -> Optional[Tuple[int, int]]:
        """``(H, W)`` of the file's images, from the array header (``None`` before a download)."""
        shape = npz_member_shape(self.path, "train_images")
        if not shape or len(shape) < 3:
            return None
        return tuple(shape[-2:]) if spatial_dims == 3 else tuple(shape[1:3])

    @property
    def task_spec(self) -> TaskSpec:
        return self._spec

    def prepare_data(self) -> None:
        if self.path.is_file() or not self.download:
            return
        if self.md5 is None:
            raise ValueError(f"MedMNISTDataModule: no official checksum for flag {self.flag!r}; download it by hand to {self.path}")
        # torchvision's downloader checks the MD5 and retries; no need to re-implement it.
        from torchvision.datasets.utils import download_url

        log.info("downloading %s to %s", official_url(self.flag), self.path)
        download_url(official_url(self.flag), root=str(self.path.parent), filename=self.path.name, md5=self.md5)

    def setup(self, stage: Optional[str] = None) -> None:
        if self._datasets:
            return
        if not self.path.is_file():
            hint = "set download: true (needs internet)" if not self.download else "the download did not produce it"
            raise FileNotFoundError(
                f"MedMNISTDataModule({self.flag}): file not found: {self.path} (cwd {os.getcwd()}); "
                f"pass data_dir or file, or {hint}"
            )
        spec = self._spec
        arrays = load_medmnist_npz(self.path, spec.num_classes, multilabel=spec.kind == "multilabel", spatial_dims=spec.spatial_dims,
                                   mmap_dir=self.mmap_dir if self.memory_map else None)
        found_channels = arrays["train_images"].shape[-1] if arrays["train_images"].ndim == 2 + spec.spatial_dims else 1
        if found_channels != spec.in_channels:
            raise ValueError(
                f"{self.path}: field 'train_images' has {found_channels} channel(s), but {self.flag} images have "
                f"{spec.in_channels}; is this the right file for the flag?"
            )
        if self._names_given and spec.kind != "multilabel":
            found = 1 + max((int(arrays[f"{split}_labels"].max()) for split in SPLITS if arrays[f"{split}_labels"].size), default=-1)
            if found < spec.num_classes:
                raise ValueError(
                    f"{self.path}: labels go up to {found - 1} ({found} classes), but class_names has {spec.num_classes} names; "
                    f"a class that never occurs can be neither learned nor tested: give one name per class of the file"
                )
        lengths = {split: len(arrays[f"{split}_images"]) for split in SPLITS}
        indices = subset_indices(self.subsets, lengths, self.subset_seed, f"MedMNISTDataModule({self.flag})", self.path)
        for split in SPLITS:
            images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
            index = indices[split]
            if index is not None and self.memory_map:  # keep the map: items are read through the index
                self._datasets[split] = ArrayImageDataset(images, labels[index], spatial_dims=spec.spatial_dims, indices=index)
                continue
            if index is not None:
                images, labels = images[index], labels[index]
            self._datasets[split] = ArrayImageDataset(images, labels, spatial_dims=spec.spatial_dims)

    def dataset(self, split: str) -> ArrayImageDataset:
        if not self._datasets:
            raise RuntimeError(f"MedMNISTDataModule({self.flag}): call setup() before asking for datasets")
        return self._datasets[split]

    def class_counts(self, split: str = "train") -> Sequence[int]:
        """Number of samples per class in ``split`` (after subsetting)."""
        targets = self.dataset(split).targets
        if targets.ndim == 2:  # multi-label: positives per class
            return targets.sum(0).tolist()
        return torch.bincount(targets, minlength=self._spec.num_classes).tolist()
