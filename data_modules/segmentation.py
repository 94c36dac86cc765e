"""Segmentation domains: images with per-pixel (or per-voxel) label masks.

Two sources are supported, both loaded eagerly in :meth:`SegmentationDataModule.setup` so that
every problem with the data shows up at setup time, not in the middle of an epoch:

* an ``.npz`` archive (:func:`load_segmentation_npz`) with keys ``images``, ``masks`` and
  ``split`` (0 = train, 1 = val, 2 = test);
* a folder (:func:`load_segmentation_folder`) laid out as
  ``root/{train,val,test}/{images,masks}/<id>.<ext>``, read with :mod:`data_modules.io`.

Items are ``{"image": Tensor[C, H, W], "target": LongTensor[H, W]}`` (2D) or
``{"image": Tensor[C, D, H, W], "target": LongTensor[D, H, W]}`` (3D); target values lie in
``[0, len(label_names)]`` with 0 = background.  ``image`` is uint8 (0..255, value ``v`` means
``v / 255``; the backbone converts it) when the source is uint8, else float32 in ``[0, 1]`` (see
:mod:`data_modules.base`).  The training augmentation (flips, 90-degree rotations) only moves
pixels, so it works on uint8 and the training split is served uint8 too.

Mask value convention (both sources): a task with one label accepts masks with values ``{0, 1}``
or ``{0, 255}`` (255 is mapped to 1: PNG masks often store foreground as 255); a task with ``n``
labels accepts values in ``[0, n]``.  Anything else is an error naming the file and the values.
Float masks (e.g. NIfTI) are accepted when every value is a whole number.

Intensity convention: uint8 images are served as uint8 (the backbone divides by 255); ``.npz``
float images must already lie in ``[0, 1]``; image files follow :mod:`data_modules.io` (uint8 /
255, uint16 / 65535, any other dtype min-max scaled per image to ``[0, 1]``), and a folder whose
images are all 8-bit is served as uint8, one with any other file as float32 throughout (one dtype
per task, so batches collate and a replay buffer holds one kind of exemplar).  Grayscale and RGB
are never converted into each other: a channel count that differs from ``in_channels`` is an error.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from pytorch_lightning.utilities import rank_zero_warn
from torch.utils.data import Dataset

from data_modules.base import SPLITS, DomainDataModule, check_subset_sizes, subset_indices
from data_modules.intensity import parse_intensity
from data_modules.io import (
    IMAGE_SUFFIXES,
    check_same_geometry,
    declared_image_size,
    image_files_by_id,
    npz_member_shape,
    open_npz,
    read_array_with_geometry,
    scale_intensities,
    to_axial,
)
from framework.core.specs import TaskSpec

__all__ = [
    "SegmentationDataModule",
    "SegmentationDataset",
    "load_segmentation_npz",
    "load_segmentation_folder",
]

log = logging.getLogger(__name__)

_NPZ_KEYS = ("images", "masks", "split")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")

# One split of a source: channel-first images (uint8 = v / 255, served as uint8, or float32 in
# [0, 1]), masks (uint8/int64 label maps) and sample ids.
SplitData = Dict[str, Any]


# ---------------------------------------------------------------------------------------------
# shared checks
# ---------------------------------------------------------------------------------------------
def _short_values(values: np.ndarray, limit: int = 10) -> str:
    shown = [v.item() if hasattr(v, "item") else v for v in values[:limit]]
    return f"{shown}{' ...' if len(values) > limit else ''}"


def _check_mask_values(mask: np.ndarray, num_labels: int, where: str, field: str) -> np.ndarray:
    """Validate label values and return the mask as uint8 (255 -> 1 for a one-label task).

    ``where`` names the file, ``field`` the field ('masks' in an archive, 'mask' in a folder).
    """
    if mask.dtype == np.bool_:
        return mask.astype(np.uint8)
    if np.issubdtype(mask.dtype, np.floating):
        if not np.all(np.isfinite(mask)) or not np.all(mask == np.round(mask)):
            bad = np.unique(mask[~np.isfinite(mask) | (mask != np.round(mask))])
            raise ValueError(f"{where}: field '{field}' expected integer label values, found values {_short_values(bad)}")
    elif not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{where}: field '{field}' expected an integer dtype, found {mask.dtype}")
    if mask.dtype == np.uint8:  # fast path for the common case
        values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))
    else:
        values = np.unique(mask)
    present = set(values.tolist())
    if num_labels == 1:
        if present <= {0, 1}:
            return mask.astype(np.uint8, copy=False)
        if present <= {0, 255}:
            return (mask == 255).astype(np.uint8)
        raise ValueError(
            f"{where}: field '{field}' expected binary values {{0,1}} (or {{0,255}}) for a task with one label, "
            f"found values {_short_values(values)}"
        )
    if present and (min(present) < 0 or max(present) > num_labels):
        raise ValueError(
            f"{where}: field '{field}' expected label values in [0, {num_labels}] for a task with {num_labels} labels "
            f"(0 = background), found values {_short_values(values)}"
        )
    return mask.astype(np.uint8 if num_labels < 256 else np.int64, copy=False)


# ---------------------------------------------------------------------------------------------
# .npz source
# ---------------------------------------------------------------------------------------------
def load_segmentation_npz(
    path: os.PathLike, spatial_dims: int = 2, num_labels: int = 1, in_channels: Optional[int] = None
) -> Dict[str, SplitData]:
    """Load and validate a segmentation ``.npz`` archive.

    The archive holds ``images`` ``(N, H, W)`` or ``(N, H, W, C)`` (2D) / ``(N, D, H, W)`` or
    ``(N, D, H, W, C)`` (3D), either uint8 (served as uint8; the backbone divides by 255) or float
    with values in ``[0, 1]``; ``masks`` ``(N, H, W)`` / ``(N, D, H, W)`` of integer labels;
    ``split`` ``(N,)`` with 0 = train, 1 = val, 2 = test (honoured exactly; a split may be empty,
    e.g. all 2 for a test-only set from another centre).  Sample ids come from
    ``names``, else ``frame``, else the sample index.

    Args:
        path: the ``.npz`` file.
        spatial_dims: 2 (images) or 3 (volumes).
        num_labels: number of foreground labels (see the module docstring for allowed mask values).
        in_channels: if given, the number of image channels the archive must have.

    Returns:
        ``{split: {"images": (n, C, *spatial) array, "masks": (n, *spatial) uint8, "ids": [str]}}``.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: on an unreadable archive, missing keys, wrong dtypes, shapes, counts, channels,
            dimensionality, mask values or split values.  Messages name the file
            and the field, what was expected and what was found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"segmentation file not found: {path}")
    wanted = _NPZ_KEYS + ("names", "frame")
    with open_npz(path) as archive:
        files = list(archive.files)
        arrays = {k: archive[k] for k in wanted if k in files}
    missing = [k for k in _NPZ_KEYS if k not in arrays]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; expected keys {list(_NPZ_KEYS)}, found {sorted(files)}")
    images, masks, split = (arrays[k] for k in _NPZ_KEYS)
    ids = arrays.get("names", arrays.get("frame"))

    kind = "2D-only" if spatial_dims == 2 else "3D"
    # dimensionality: masks are unambiguous, images may carry a trailing channel axis
    if masks.ndim != spatial_dims + 1:
        what = "volumes" if masks.ndim == 4 else ("2D masks" if masks.ndim == 3 else "arrays")
        raise ValueError(
            f"{path}: field 'masks' expected shape {'(N, H, W)' if spatial_dims == 2 else '(N, D, H, W)'} "
            f"(the task is {kind}, spatial_dims={spatial_dims}), found {what} of shape {masks.shape}"
        )
    if spatial_dims == 2 and (images.ndim == 5 or (images.ndim == 4 and images.shape[-1] > 4)):
        raise ValueError(
            f"{path}: field 'images' expected 2D images (N, H, W[, C]) (the task is 2D-only, spatial_dims=2), "
            f"found a volume of shape {images.shape}"
        )
    if images.ndim not in (spatial_dims + 1, spatial_dims + 2):
        layout = "(N, H, W) or (N, H, W, C)" if spatial_dims == 2 else "(N, D, H, W) or (N, D, H, W, C)"
        raise ValueError(
            f"{path}: field 'images' expected shape {layout} (the task is {kind}, spatial_dims={spatial_dims}), "
            f"found shape {images.shape}"
        )
    # dtypes and value ranges
    if np.issubdtype(images.dtype, np.floating):
        lo, hi = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
        if not (np.isfinite(lo) and np.isfinite(hi)) or lo < 0.0 or hi > 1.0:
            raise ValueError(
                f"{path}: field 'images' expected uint8, or float values in [0, 1], found {images.dtype} values in [{lo}, {hi}]"
            )
        images = images.astype(np.float32, copy=False)
    elif images.dtype != np.uint8:
        raise ValueError(f"{path}: field 'images' expected dtype uint8 (or float in [0, 1]), found {images.dtype}")
    # counts and shapes
    n = len(images)
    for field, array in (("masks", masks), ("split", split)):
        if len(array) != n:
            raise ValueError(f"{path}: field '{field}' has {len(array)} samples but 'images' has {n}; counts must match")
    spatial = images.shape[1 : spatial_dims + 1]
    if masks.shape[1:] != spatial:
        raise ValueError(
            f"{path}: field 'masks' expected the spatial shape of 'images' {tuple(spatial)} for every sample, "
            f"found {tuple(masks.shape[1:])} (first mismatch: sample 0)"
        )
    channels = images.shape[-1] if images.ndim == spatial_dims + 2 else 1
    if in_channels is not None and channels != in_channels:
        raise ValueError(
            f"{path}: field 'images' expected {in_channels} channel(s) (in_channels={in_channels}), "
            f"found {channels} channel(s) in shape {images.shape}"
        )
    masks = _check_mask_values(masks, num_labels, str(path), "masks")
    # split
    if split.ndim != 1 or not np.issubdtype(split.dtype, np.integer):
        raise ValueError(
            f"{path}: field 'split' expected an (N,) integer array with values 0/1/2, found {split.dtype} shape {split.shape}"
        )
    bad = sorted(set(np.unique(split).tolist()) - {0, 1, 2})
    if bad:
        raise ValueError(
            f"{path}: field 'split' expected values in {{0, 1, 2}} (train/val/test), found values {_short_values(np.array(bad))}"
        )
    # a split may be empty (a test-only set from another centre): the stream refuses a domain whose role needs it

    if images.ndim == spatial_dims + 1:
        images = images[:, None]
    else:
        images = np.moveaxis(images, -1, 1)  # a view: channel-first without copying
    id_list = [str(v) for v in ids] if ids is not None and len(ids) == n else [str(i) for i in range(n)]
    out: Dict[str, SplitData] = {}
    for code, name in enumerate(SPLITS):
        index = np.flatnonzero(split == code)
        out[name] = {"images": images[index], "masks": masks[index], "ids": [id_list[i] for i in index]}
    return out


# ---------------------------------------------------------------------------------------------
# folder source
# ---------------------------------------------------------------------------------------------
def _read_file(path: Path, field: str, spatial_dims: int):
    """Read one file as a channel-first array (raw values; NIfTI reoriented to RAS) and check its
    dimensionality; returns ``(array, geometry)`` (geometry ``None`` for PNG/JPEG)."""
    array, geometry = read_array_with_geometry(path)
    shape = tuple(array.shape[1:])
    if len(shape) != spatial_dims:
        if spatial_dims == 2:
            raise ValueError(
                f"{path}: field '{field}': the task is 2D-only (spatial_dims=2) but the file holds a volume of shape {shape}"
            )
        raise ValueError(
            f"{path}: field '{field}': the task is 3D (spatial_dims=3) but the file holds a {len(shape)}D image of shape {shape}"
        )
    return array, geometry


def load_segmentation_folder(
    root: os.PathLike, spatial_dims: int = 2, num_labels: int = 1, in_channels: Optional[int] = None, intensity: Any = None
) -> Dict[str, SplitData]:
    """Load and validate a folder source ``root/{train,val,test}/{images,masks}/<id>.<ext>``.

    Files are read with :func:`data_modules.io.read_array` (hidden files are skipped); ``<ext>`` is
    one of :data:`data_modules.io.IMAGE_SUFFIXES`.  PNG/JPEG arrays are ``(C, H, W)`` as the image is
    displayed; NIfTI images and masks are both reoriented to RAS (an image stored LPS and its mask
    stored RAS are paired voxel by voxel correctly), and their affines must then agree (spacing,
    direction, origin within :data:`data_modules.io.AFFINE_TOLERANCE` mm); a NIfTI with a 4th axis
    is refused (a 2D image saved as ``(X, Y, 1)`` counts as 2D).  Volumes are served ``(C, Z, Y, X)``
    (images) and ``(Z, Y, X)`` (masks): depth along the superior axis, so the tower sees axial
    slices (:func:`data_modules.io.to_axial`, ``TaskSpec.depth_axis = "axial"``).  All images of one split must have
    one size (batches are stacked): the first image of another size is refused.  Scaling
    (:func:`data_modules.io.scale_intensities` with the ``intensity`` policy, :mod:`data_modules.intensity`);
    under the default ``auto``: uint8 / 255 (kept uint8 and served as uint8 when every image of the
    folder is 8-bit), uint16 by its real bit depth, other dtypes min-max per image to ``[0, 1]``
    with a warning, once (set ``ct:<window>`` for CT in Hounsfield units, ``mr`` for MR).  An image
    may be a DICOM series: a sub-folder of ``.dcm`` files named like its mask.  Grayscale is never converted to RGB (or back).  Masks are never rescaled and must
    have one channel; float NIfTI masks are accepted if their values are whole numbers.

    Args:
        root: the dataset folder.
        spatial_dims: 2 (images) or 3 (volumes).
        num_labels: number of foreground labels (see the module docstring for allowed mask values).
        in_channels: if given, the number of channels every image must have.
        intensity: the intensity policy (or its config form); ``None`` is ``auto``.

    Returns:
        ``{split: {"images": [(C, *spatial) array], "masks": [(*spatial) array], "ids": [str]}}``;
        images stay uint8 if every image of the folder (all splits) is 8-bit, else all are float32
        in ``[0, 1]``.

    Raises:
        FileNotFoundError: if ``root`` does not exist.
        ValueError: on a missing split folder, an unsupported extension, two files with one id, an
            unreadable file, an image without a mask (or a mask without an image), an empty split, a
            wrong number of channels, a 3D file for a 2D task (or the reverse), a 4D NIfTI, image/mask
            shapes or NIfTI affines (after reorientation) that differ, images of different sizes in
            one split, or invalid mask values.  Messages name the file(s) and the field.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"segmentation folder not found: {root}")
    out: Dict[str, SplitData] = {}
    for split in SPLITS:
        images_dir, masks_dir = root / split / "images", root / split / "masks"
        for folder in (images_dir, masks_dir):
            if not folder.is_dir():
                raise ValueError(
                    f"{folder}: folder not found; a folder source is laid out as "
                    f"root/{{train,val,test}}/{{images,masks}}/<id>.<ext>"
                )
        images, masks = image_files_by_id(images_dir, strict=True), image_files_by_id(masks_dir, strict=True)
        for stem, path in images.items():
            if stem not in masks:
                raise ValueError(
                    f"{path}: field 'image' has no matching mask; expected {masks_dir}/{stem}.<ext> with <ext> one of "
                    f"{list(IMAGE_SUFFIXES)}, found none"
                )
        for stem, path in masks.items():
            if stem not in images:
                raise ValueError(f"{path}: field 'mask' has no matching image; expected {images_dir}/{stem}.<ext>, found none")
        if not images:
            raise ValueError(f"{images_dir}: split '{split}' expected at least one image, found none")
        data: SplitData = {"images": [], "masks": [], "ids": []}
        for stem in sorted(images):
            image_path, mask_path = images[stem], masks[stem]
            (image, image_geometry), (mask, mask_geometry) = (
                _read_file(image_path, "image", spatial_dims), _read_file(mask_path, "mask", spatial_dims)
            )
            check_same_geometry(image_path, image_geometry, mask_path, mask_geometry)
            if in_channels is not None and image.shape[0] != in_channels:
                raise ValueError(
                    f"{image_path}: field 'image' expected {in_channels} channel(s) (in_channels={in_channels}), found "
                    f"{image.shape[0]} channel(s); images are not converted between grayscale and RGB"
                )
            if mask.shape[0] != 1:
                raise ValueError(f"{mask_path}: field 'mask' expected a single-channel mask, found {mask.shape[0]} channels")
            if mask.shape[1:] != image.shape[1:]:
                raise ValueError(
                    f"{mask_path}: field 'mask' expected the spatial shape of its image {image_path} "
                    f"{tuple(image.shape[1:])}, found {tuple(mask.shape[1:])}"
                )
            keep = image.dtype == np.uint8 and (intensity is None or getattr(intensity, "kind", intensity) == "auto")
            image = image if keep else scale_intensities(image, image_path, intensity)
            mask = _check_mask_values(mask[0], num_labels, str(mask_path), "mask")
            if spatial_dims == 3:  # depth along the superior axis: the tower sees axial slices (TaskSpec.depth_axis "axial")
                image, mask = np.ascontiguousarray(to_axial(image)), np.ascontiguousarray(to_axial(mask[None])[0])
            data["images"].append(image)
            data["masks"].append(mask)
            data["ids"].append(stem)
            first = data["images"][0]
            if image.shape[1:] != first.shape[1:]:  # batches of a split are stacked: one size per split
                raise ValueError(
                    f"{image_path}: field 'image' expected the size of the first image of the '{split}' split "
                    f"({images[sorted(images)[0]].name}) {tuple(first.shape[1:])}, found {tuple(image.shape[1:])}; "
                    f"batches are stacked, so the images (and masks) of a split must have one size: resize them"
                )
        out[split] = data
    if any(im.dtype != np.uint8 for data in out.values() for im in data["images"]):
        # one dtype per task: mixed uint8/float items would not collate (or would promote 0..255 to float)
        for data in out.values():
            data["images"] = [scale_intensities(im, root) if im.dtype == np.uint8 else im for im in data["images"]]
    return out


# ---------------------------------------------------------------------------------------------
# dataset
# ---------------------------------------------------------------------------------------------
def _augmentation(spatial_dims: int, rotate: bool) -> Any:
    from monai.transforms import Compose, RandFlipd, RandRotate90d

    keys = ["image", "target"]
    transforms: List[Any] = [RandFlipd(keys=keys, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    if rotate:  # in the last two spatial axes (H, W); only when they are equal so batches still collate
        transforms.append(RandRotate90d(keys=keys, prob=0.5, spatial_axes=(spatial_dims - 2, spatial_dims - 1)))
    return Compose(transforms)


class SegmentationDataset(Dataset):
    """Images and masks held in memory.

    Items are ``{"image": Tensor[C, *spatial], "target": LongTensor[*spatial]}``: ``image`` is uint8
    (0..255) for uint8 images with ``serve_uint8=True``, else float32 in ``[0, 1]``; items are
    copies, so callers may modify them in place.  With ``augment=True`` random flips along every
    spatial axis and random 90-degree rotations in the (H, W) plane (only if H == W for every image)
    are applied to image and mask together with MONAI dictionary transforms; their random state is
    drawn from torch's generator for every item, so augmentation follows ``torch.manual_seed`` and
    differs between DataLoader workers.

    Args:
        images: channel-first images, uint8 (``v`` means ``v / 255``) or float in ``[0, 1]``.
        masks: label maps with the images' spatial shapes.
        spatial_dims: 2 or 3.
        augment: apply random augmentation (flips and rotations, which work on uint8 as on float).
        serve_uint8: serve uint8 images as uint8, the contract of :mod:`data_modules.base`
            (:class:`SegmentationDataModule` does).  ``False`` (the default, kept for callers that
            still expect float items, e.g. :class:`~data_modules.pet_ct.SemiSyntheticPETCTDataModule`)
            serves them as float32 divided by 255.

    Raises:
        ValueError: if the numbers of images and masks differ.
    """

    def __init__(
        self,
        images: Sequence[np.ndarray],
        masks: Sequence[np.ndarray],
        spatial_dims: int = 2,
        augment: bool = False,
        serve_uint8: bool = False,
    ) -> None:
        if len(images) != len(masks):
            raise ValueError(f"SegmentationDataset: {len(images)} images but {len(masks)} masks")
        self.images = images
        self.masks = masks
        self.spatial_dims = spatial_dims
        self.augment = bool(augment)
        self.serve_uint8 = bool(serve_uint8)
        rotate = all(im.shape[-1] == im.shape[-2] for im in images)
        self.transform = _augmentation(spatial_dims, rotate) if self.augment else None

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> Dict[str, torch.Tensor]:
        image = torch.from_numpy(np.ascontiguousarray(self.images[index]))
        # copies, so callers may modify items in place without touching the stored data
        if image.dtype == torch.uint8:
            image = image.clone() if self.serve_uint8 else image.float().div_(255.0)
        else:
            image = image.to(torch.float32, copy=True)
        target = torch.from_numpy(np.ascontiguousarray(self.masks[index])).to(torch.long, copy=True)
        if self.transform is not None:
            self.transform.set_random_state(seed=int(torch.randint(0, 2**31 - 1, ()).item()))
            out = self.transform({"image": image, "target": target[None]})
            image, target = _plain(out["image"]), _plain(out["target"])[0]
        return {"image": image.contiguous(), "target": target.contiguous()}


def _plain(tensor: Any) -> torch.Tensor:
    """MONAI returns MetaTensors; hand plain tensors to collate and replay buffers."""
    return tensor.as_tensor() if hasattr(tensor, "as_tensor") else torch.as_tensor(tensor)


# ---------------------------------------------------------------------------------------------
# data module
# ---------------------------------------------------------------------------------------------
def _derive_task_name(source: str) -> str:
    name = Path(os.path.abspath(source)).name
    if name.lower().endswith(".npz"):
        name = name[:-4]
    name = re.sub(r"[^A-Za-z0-9_\-]", "_", name)
    if not name:
        return "segmentation"
    return name if name[0].isalpha() and name.isascii() else f"seg_{name}"


def _any_foreground(masks: Sequence[np.ndarray]) -> bool:
    return bool(masks.any()) if isinstance(masks, np.ndarray) else any(m.any() for m in masks)


def _warn_if_no_foreground(owner: str, spec: TaskSpec, masks: Dict[str, Sequence[np.ndarray]]) -> None:
    """One warning (per call, i.e. per task's ``setup``) naming every split whose masks are all background (0)."""
    empty = {
        split: len(split_masks) for split, split_masks in masks.items()
        if len(split_masks) and not _any_foreground(split_masks)
    }
    if not empty:
        return
    where = " and ".join(f"the '{split}' split (all {n} mask{'s' if n != 1 else ''})" for split, n in empty.items())
    labels = len(spec.label_names)
    label_text = f"label 1 = {spec.label_names[0]!r}" if labels == 1 else f"labels 1..{labels} = {list(spec.label_names)}"
    effect = "the model would learn to predict background only" if "train" in empty else "its Dice is 0 or undefined"
    rank_zero_warn(
        f"{owner}: no foreground in {where}: every pixel is background, none has {label_text}; {effect}: check the mask files"
    )


class SegmentationDataModule(DomainDataModule):
    """A segmentation domain from an ``.npz`` archive or an image folder.

    The :attr:`task_spec` (kind ``"segmentation"``) is known right after construction; the data are
    loaded and checked against it in :meth:`setup`.

    Args:
        file: an ``.npz`` archive (see :func:`load_segmentation_npz`).  Exactly one of ``file`` and
            ``root`` must be given.
        root: a folder ``root/{train,val,test}/{images,masks}/<id>.<ext>`` (see
            :func:`load_segmentation_folder`).
        task_name: task name in the stream; defaults to the file stem or folder name made into an
            identifier (other characters become ``_``; ``seg_`` is prepended if it does not start
            with a letter).
        label_names: foreground label names (mask value ``i`` is ``label_names[i - 1]``, 0 is
            background).
        modality: imaging modality, e.g. ``"endoscopy"``.
        in_channels: image channels the data must have (1 = grayscale, 3 = RGB).
        spatial_dims: 2 for images, 3 for volumes.
        image_size: the in-plane size the model runs this task at (``TaskSpec.image_size``); default:
            the size an ``.npz`` source's images come in (a folder's task runs at the backbone's size).
        augment: random flips/90-degree rotations of the training split (never val/test).
        train_subset: use a random subset of this many training samples (``None`` = all).
        val_subset: same for validation.
        test_subset: same for test.
        subset_seed: seed of the subset draw (the same seed gives the same subsets).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader workers.
        drop_last: drop the last, incomplete training batch of an epoch (see :class:`DomainDataModule`).
        intensity: the intensity policy of a folder source (:mod:`data_modules.intensity`: ``auto``,
            ``ct:<window>``, ``mr``, ``bits:<n>``, ``range:<low>,<high>``, ``minmax``); an ``.npz``
            source takes ``auto`` only (its images are uint8 or float in [0, 1] already).

    Raises:
        ValueError: on invalid arguments (the message names the argument, what was expected and what
            was found); in :meth:`setup`, on data that does not match the spec, or a subset larger
            than its split.
        FileNotFoundError: in :meth:`setup`, if the file or folder does not exist.

    Example::

        dm = SegmentationDataModule(file="../shared/data/segmentation/kvasir_seg_64.npz",
                                    label_names=["polyp"], modality="endoscopy")
        dm.setup("fit")
        batch = next(iter(dm.loader("train")))  # {"kvasir_seg_64": {"image": uint8 (16, 3, 64, 64), "target": (16, 64, 64)}}
    """

    def __init__(
        self,
        file: Optional[str] = None,
        root: Optional[str] = None,
        task_name: Optional[str] = None,
        label_names: Optional[List[str]] = None,
        modality: str = "unknown",
        in_channels: int = 3,
        spatial_dims: int = 2,
        image_size: Optional[int] = None,
        augment: bool = True,
        train_subset: Optional[int] = None,
        val_subset: Optional[int] = None,
        test_subset: Optional[int] = None,
        subset_seed: int = 0,
        batch_size: int = 16,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        drop_last: bool = False,
        intensity: Optional[Union[str, Dict[str, Any]]] = None,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, drop_last=drop_last)
        me = "SegmentationDataModule"
        if (file is None) == (root is None):
            found = "both" if file is not None else "neither"
            raise ValueError(
                f"{me}: expected exactly one of file (an .npz archive) or root (a folder), found {found} "
                f"(file={file!r}, root={root!r})"
            )
        for arg, value in (("file", file), ("root", root)):
            if value is not None and (not isinstance(value, (str, os.PathLike)) or not str(value)):
                raise ValueError(f"{me}: {arg} expected a non-empty path, found {value!r}")
        if file is not None and not str(file).lower().endswith(".npz"):
            raise ValueError(f"{me}: file expected a path ending in .npz, found {str(file)!r}")
        if task_name is not None and (not isinstance(task_name, str) or not _NAME_RE.match(task_name)):
            raise ValueError(
                f"{me}: task_name expected None or an identifier of letters, digits, '_' or '-' starting with a letter, "
                f"found {task_name!r}"
            )
        label_names = ["foreground"] if label_names is None else label_names
        if (
            isinstance(label_names, str)
            or not isinstance(label_names, (list, tuple))
            or not label_names
            or not all(isinstance(n, str) and n for n in label_names)
        ):
            raise ValueError(f"{me}: label_names expected a non-empty list of non-empty strings, found {label_names!r}")
        if len(set(label_names)) != len(label_names):
            raise ValueError(f"{me}: label_names expected unique names, found {list(label_names)!r}")
        if not isinstance(modality, str) or not modality:
            raise ValueError(f"{me}: modality expected a non-empty string, found {modality!r}")
        if isinstance(in_channels, bool) or not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"{me}: in_channels expected a positive integer, found {in_channels!r}")
        if isinstance(spatial_dims, bool) or spatial_dims not in (2, 3):
            raise ValueError(f"{me}: spatial_dims expected 2 or 3, found {spatial_dims!r}")
        if not isinstance(augment, bool):
            raise ValueError(f"{me}: augment expected true or false, found {augment!r}")
        subsets = check_subset_sizes(me, train_subset, val_subset, test_subset)
        if isinstance(subset_seed, bool) or not isinstance(subset_seed, int):
            raise ValueError(f"{me}: subset_seed expected an integer, found {subset_seed!r}")
        self.intensity = parse_intensity(intensity, where=me)
        if file is not None and self.intensity.kind != "auto":
            raise ValueError(
                f"{me}: intensity expected 'auto' for an .npz file ({file}), whose images are uint8 or float in [0, 1] already; "
                f"found {self.intensity.describe()!r} (intensity policies apply to folder sources: NIfTI, DICOM, PNG)"
            )

        self.path = Path(file if file is not None else root)
        self.source = "npz" if file is not None else "folder"
        self.augment = augment
        self.subsets = subsets
        self.subset_seed = subset_seed
        self._spec = TaskSpec(
            name=task_name or _derive_task_name(str(self.path)),
            kind="segmentation",
            modality=modality,
            label_names=tuple(label_names),
            in_channels=in_channels,
            spatial_dims=spatial_dims,
            image_size=declared_image_size(image_size, self._source_image_size(), me),
            intensity=self.intensity.describe(),
            depth_axis="axial" if self.source == "folder" and spatial_dims == 3 else "stored",
        )
        self._datasets: Dict[str, SegmentationDataset] = {}

    def _source_image_size(self) -> Optional[Tuple[int, int]]:
        """``(H, W)`` of the masks of an ``.npz`` source, from the array header (``None`` for a folder:
        give ``image_size`` to run a folder's task at another size than the backbone's)."""
        shape = npz_member_shape(self.path, "masks") if self.source == "npz" else None
        return tuple(shape[-2:]) if shape and len(shape) >= 3 else None

    @property
    def task_spec(self) -> TaskSpec:
        return self._spec

    def setup(self, stage: Optional[str] = None) -> None:
        """Load every split into memory and check it against :attr:`task_spec` (idempotent).

        Warns once (naming the task and the splits) when every mask of a split is background.

        Raises:
            FileNotFoundError: if the file or folder does not exist.
            ValueError: on invalid data (see the loaders) or a subset larger than its split.
        """
        if self._datasets:
            return
        spec = self._spec
        load = load_segmentation_npz if self.source == "npz" else load_segmentation_folder
        if not self.path.exists():
            raise FileNotFoundError(
                f"SegmentationDataModule({spec.name}): {'file' if self.source == 'npz' else 'root'} not found: {self.path} "
                f"(cwd {os.getcwd()})"
            )
        extra = {"intensity": self.intensity} if self.source == "folder" else {}
        data = load(self.path, spatial_dims=spec.spatial_dims, num_labels=len(spec.label_names), in_channels=spec.in_channels, **extra)
        lengths = {split: len(data[split]["images"]) for split in SPLITS}
        indices = subset_indices(
            self.subsets, lengths, self.subset_seed, f"SegmentationDataModule({spec.name})", self.path, items="'{split}' samples"
        )
        datasets = {}
        for split in SPLITS:
            images, masks = data[split]["images"], data[split]["masks"]
            index = indices[split]
            if index is not None:
                if isinstance(images, np.ndarray):
                    images, masks = images[index], masks[index]
                else:
                    images, masks = [images[i] for i in index], [masks[i] for i in index]
            datasets[split] = SegmentationDataset(
                images,
                masks,
                spatial_dims=spec.spatial_dims,
                augment=self.augment and split == "train",
                serve_uint8=True,
            )
        self._datasets = datasets
        _warn_if_no_foreground(f"SegmentationDataModule({spec.name})", spec, {split: datasets[split].masks for split in SPLITS})

    def dataset(self, split: str) -> SegmentationDataset:
        if split not in SPLITS:
            raise ValueError(f"SegmentationDataModule({self.name}): split expected one of {list(SPLITS)}, found {split!r}")
        if not self._datasets:
            raise RuntimeError(f"SegmentationDataModule({self.name}): call setup() before asking for datasets")
        return self._datasets[split]
