"""Reading image files (PNG/JPEG and NIfTI): the one place in MedCL where it is done.

The segmentation and survival data modules and ``medcl predict`` all read files through this
module, so they agree on the following conventions.

* **Endings** (:data:`IMAGE_SUFFIXES`): ``.nii.gz``, ``.nii``, ``.png``, ``.jpg``, ``.jpeg``
  (any letter case).  A file's id is its name without that ending (:func:`file_id`).
* **PNG/JPEG** are read with MONAI's ``PILReader(reverse_indexing=False)``, i.e. with MONAI's
  default ``(W, H)`` transposition undone: arrays are ``(C, H, W)`` with row 0 at the top of the
  picture as it is seen.  Grayscale gives ``C = 1``, RGB ``C = 3``, RGBA ``C = 4``; grayscale and
  colour are never converted into each other.
* **NIfTI** (``.nii``, ``.nii.gz``) are read with MONAI's ``NibabelReader`` in the file's *stored*
  axis order: no reorientation to a canonical orientation and no axis moves.  A volume stored
  ``(X, Y, Z)`` gives ``(C, X, Y, Z)``; a 2D image stored ``(X, Y)`` gives ``(C, X, Y)``, read as
  ``(C, H, W)``; a 2D image saved as ``(X, Y, 1)`` is squeezed to ``(C, X, Y)``.
* **Raw values** (:func:`read_array`): the file's own dtype, never rescaled; use it for masks and
  label maps.
* **Intensities** (:func:`read_image`, :func:`scale_intensities`): float32 in ``[0, 1]``: uint8 is
  divided by 255, uint16 by 65535, bool becomes 0/1, anything else (float or other integer NIfTI,
  32-bit PNG) is min-max scaled per image (a constant image becomes all zeros).  NaN or infinite
  pixels are an error naming the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Union

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "is_nifti",
    "file_id",
    "list_image_files",
    "image_files_by_id",
    "read_array",
    "scale_intensities",
    "read_image",
    "open_npz",
    "CheckedNpz",
]

PathLike = Union[str, Path]

#: file endings MedCL reads as images, longest first where one ends another (``.nii.gz`` before ``.nii``)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".png", ".jpg", ".jpeg")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: PathLike) -> bool:
    """Whether ``path`` ends in ``.nii`` or ``.nii.gz`` (any letter case)."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


def _image_suffix(name: str) -> str:
    """The image ending of a file name (as written), or ``""`` if it has none."""
    lower = name.lower()
    for suffix in IMAGE_SUFFIXES:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[-len(suffix):]
    return ""


def file_id(path: PathLike) -> str:
    """The file name without its image ending (``case_001.nii.gz`` -> ``case_001``).

    A name without an image ending loses only its last suffix (``notes.txt`` -> ``notes``).
    """
    name = Path(path).name
    suffix = _image_suffix(name)
    return name[: -len(suffix)] if suffix else Path(path).stem


def list_image_files(folder: PathLike, strict: bool = False) -> List[Path]:
    """Image files of ``folder``, sorted by name.

    Not recursive: sub-folders are skipped, and so are hidden files (names starting with ``.``).
    Files with other endings are skipped too, unless ``strict``.

    Args:
        folder: the folder to list.
        strict: raise on a (non-hidden) file whose ending is not in :data:`IMAGE_SUFFIXES`.

    Raises:
        FileNotFoundError: if the folder does not exist.
        ValueError: with ``strict``, on a file with another ending, naming it.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    files = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if _image_suffix(path.name):
            files.append(path)
        elif strict:
            raise ValueError(
                f"{path}: unsupported file extension, expected one of {list(IMAGE_SUFFIXES)}, found {path.name!r}"
            )
    return files


def image_files_by_id(folder: PathLike, strict: bool = False) -> Dict[str, Path]:
    """``{file_id: path}`` for the image files of ``folder`` (see :func:`list_image_files`), in name order.

    Raises:
        FileNotFoundError: if the folder does not exist.
        ValueError: if two files have the same id (``a.png`` and ``a.nii.gz``), naming both; with
            ``strict``, on a file with another ending.
    """
    files: Dict[str, Path] = {}
    for path in list_image_files(folder, strict=strict):
        key = file_id(path)
        if key in files:
            raise ValueError(
                f"{folder}: id {key!r} expected one image file, found two: {files[key].name} and {path.name}"
            )
        files[key] = path
    return files


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def read_array(path: PathLike) -> np.ndarray:
    """Read one image or volume as a channel-first, contiguous, writable array with the file's own
    dtype (values never rescaled).

    PNG/JPEG give ``(C, H, W)`` as the picture is seen; NIfTI gives the stored axis order,
    ``(C, X, Y, Z)`` for a volume and ``(C, X, Y)`` for a 2D image (also when saved as
    ``(X, Y, 1)``); see the module docstring.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: ``"<path>: not a readable image file (<reason>)"`` if the file has another
            ending or cannot be decoded.
    """
    from monai.data import NibabelReader, PILReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        if not _image_suffix(path.name):
            raise ValueError(f"unsupported ending, expected one of {list(IMAGE_SUFFIXES)}")
        reader = NibabelReader() if is_nifti(path) else PILReader(reverse_indexing=False)
        array, meta = reader.get_data(reader.read(str(path)))
        array = np.asarray(array)
    except Exception as err:  # MONAI/PIL/nibabel raise many types for unreadable files
        raise ValueError(f"{path}: not a readable image file ({_first_line(err)})") from None
    channel_dim = meta.get("original_channel_dim")
    if isinstance(channel_dim, (int, np.integer)):
        array = np.moveaxis(array, int(channel_dim), 0)
    else:  # MONAI marks "no channel" with NaN
        array = array[None]
    if is_nifti(path) and array.ndim == 4 and array.shape[-1] == 1:  # a 2D image saved as (X, Y, 1)
        array = array[..., 0]
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()  # PIL hands out read-only buffers


def scale_intensities(array: np.ndarray, source: object) -> np.ndarray:
    """Scale raw pixel values to float32 in ``[0, 1]`` (conventions in the module docstring).

    uint8 / 255, uint16 / 65535, bool -> 0/1, any other integer or float dtype min-max per image
    (a constant image becomes all zeros).

    Args:
        array: raw values, e.g. from :func:`read_array`.
        source: what to name in error messages (the file).

    Raises:
        ValueError: on a non-numeric dtype or NaN/infinite values, naming ``source``.
    """
    if array.dtype == np.uint8:
        return array.astype(np.float32) / np.float32(255.0)
    if array.dtype == np.uint16:
        return array.astype(np.float32) / np.float32(65535.0)
    if array.dtype == np.bool_:
        return array.astype(np.float32)
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise ValueError(f"{source}: expected numeric pixel values, found dtype {array.dtype}")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{source}: expected finite pixel values, found NaN or infinite values")
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    return (array - low) / (high - low) if high > low else np.zeros_like(array)


def read_image(path: PathLike) -> np.ndarray:
    """Read one image or volume as a channel-first float32 array in ``[0, 1]``.

    :func:`read_array` followed by :func:`scale_intensities`: same shapes and axis order as
    :func:`read_array` (PNG/JPEG ``(C, H, W)`` as seen; NIfTI stored order ``(C, X, Y[, Z])``).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file cannot be read or holds non-numeric or non-finite values, naming it.
    """
    return np.ascontiguousarray(scale_intensities(read_array(path), Path(path)))


class CheckedNpz:
    """An open ``.npz`` archive whose arrays are read with errors that name the file and the array.

    ``numpy.load`` reads an ``.npz`` lazily: a damaged member (CRC error, truncated data) or an
    object array fails only when that array is accessed, with an error that names neither.
    """

    def __init__(self, archive, path: PathLike) -> None:
        self._archive = archive
        self.path = Path(path)

    @property
    def files(self) -> List[str]:
        return list(self._archive.files)

    @property
    def zip(self):
        """The underlying ``zipfile.ZipFile`` (to read array headers without the data)."""
        return self._archive.zip

    def __contains__(self, key: str) -> bool:
        return key in self._archive.files

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._archive.files:
            raise KeyError(f"{self.path}: no array {key!r} (it has {sorted(self._archive.files)})")
        try:
            return self._archive[key]
        except ValueError as err:
            if "allow_pickle" in str(err) or "Object arrays" in str(err):
                raise ValueError(
                    f"{self.path}: array {key!r} holds Python objects (dtype=object); MedCL reads numeric arrays only and never "
                    f"unpickles data files: save it with a numeric dtype (e.g. uint8 images, int64 labels)"
                ) from None
            raise ValueError(f"{self.path}: array {key!r} could not be read ({_first_line(err)})") from None
        except Exception as err:  # zipfile/zlib/EOFError for damaged members
            raise ValueError(
                f"{self.path}: array {key!r} is damaged ({type(err).__name__}: {_first_line(err)}); the file is corrupt or "
                f"was cut short, copy or download it again"
            ) from None

    def close(self) -> None:
        self._archive.close()

    def __enter__(self) -> "CheckedNpz":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_npz(path: PathLike) -> CheckedNpz:
    """Open an ``.npz`` archive (no pickles) for use in a ``with`` block; reading an array that is
    damaged or holds Python objects raises an error naming the file and the array (:class:`CheckedNpz`).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: ``"<path>: ..."`` if the file is not a zip archive written by ``numpy.savez``
            (e.g. empty, a ``.npy``, random bytes) or its zip directory cannot be read (truncated).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: .npz file not found (cwd {Path.cwd()})")
    with open(path, "rb") as fh:
        head = fh.read(6)
    if not head.startswith(b"PK"):
        found = "an empty file" if not head else ("a .npy array" if head.startswith(b"\x93NUMPY") else f"a file starting with {head[:4]!r}")
        raise ValueError(f"{path}: expected an .npz archive (a zip file written by numpy.savez), found {found}")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:  # numpy/zipfile raise several types for damaged archives
        raise ValueError(f"{path}: not a readable .npz archive ({_first_line(err)}); the file is corrupt or was cut short") from None
    return CheckedNpz(archive, path)
