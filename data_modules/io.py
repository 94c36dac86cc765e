"""Reading image files (PNG/JPEG and NIfTI) into channel-first arrays, through MONAI's readers."""
from __future__ import annotations

from pathlib import Path
from typing import List, Union

import numpy as np

__all__ = ["IMAGE_SUFFIXES", "file_id", "list_image_files", "read_image", "is_nifti"]

#: file endings MedCL reads as images
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".nii", ".nii.gz")


def is_nifti(path: Union[str, Path]) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def file_id(path: Union[str, Path]) -> str:
    """The file name without its image ending (``case_001.nii.gz`` -> ``case_001``)."""
    name = Path(path).name
    for suffix in sorted(IMAGE_SUFFIXES, key=len, reverse=True):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem


def list_image_files(folder: Union[str, Path]) -> List[Path]:
    """Image files of ``folder`` (not recursive), sorted by name.

    Raises:
        FileNotFoundError: if the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(IMAGE_SUFFIXES))


def read_image(path: Union[str, Path]) -> np.ndarray:
    """Read one image or volume as a channel-first float32 array scaled to ``[0, 1]``.

    PNG/JPEG (MONAI ``PILReader``, rows first as the picture is seen): ``(C, H, W)`` divided by 255.
    NIfTI (MONAI ``NibabelReader``): a 2D image gives ``(1, H, W)``; a volume stored ``(X, Y, Z)``
    gives ``(1, Z, Y, X)`` (axial slices first, as MedCL's slice-wise encoder expects); intensities
    are min-max scaled per image (a constant image becomes all zeros).

    Raises:
        ValueError: if the file cannot be read, naming it.
    """
    from monai.transforms import LoadImage

    path = Path(path)
    try:
        if is_nifti(path):
            array = np.asarray(LoadImage(reader="NibabelReader", image_only=True, ensure_channel_first=True)(str(path)), dtype=np.float32)
            if array.ndim == 4 and array.shape[-1] == 1:  # a 2D slice saved as (X, Y, 1)
                array = array[..., 0]
            array = np.ascontiguousarray(np.moveaxis(array, list(range(1, array.ndim)), list(range(array.ndim - 1, 0, -1))))
            low, high = float(array.min()), float(array.max())
            return (array - low) / (high - low) if high > low else np.zeros_like(array)
        from monai.data import PILReader

        array = LoadImage(reader=PILReader(reverse_indexing=False), image_only=True, ensure_channel_first=True)(str(path))
        return np.ascontiguousarray(np.asarray(array, dtype=np.float32) / 255.0)
    except Exception as err:  # MONAI/PIL/nibabel raise many types for unreadable files
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: not a readable image file ({first_line})") from None
