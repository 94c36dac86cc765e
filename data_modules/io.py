"""Reading image files (PNG/JPEG, NIfTI and DICOM): the one place in MedCL where it is done.

The segmentation and survival data modules and ``medcl predict`` all read files through this
module, so they agree on the following conventions.

* **Endings** (:data:`IMAGE_SUFFIXES`): ``.nii.gz``, ``.nii``, ``.dcm``, ``.png``, ``.jpg``, ``.jpeg``
  (any letter case).  A file's id is its name without that ending (:func:`file_id`).  A
  **DICOM series** is a folder of ``.dcm`` files (one per slice); in a listed folder
  (:func:`list_image_files`) such a sub-folder counts as one image whose id is the folder's name.
* **PNG/JPEG** are read with MONAI's ``PILReader(reverse_indexing=False)``, i.e. with MONAI's
  default ``(W, H)`` transposition undone: arrays are ``(C, H, W)`` with row 0 at the top of the
  picture as it is seen.  Grayscale gives ``C = 1``, RGB ``C = 3``, RGBA ``C = 4``; grayscale and
  colour are never converted into each other.
* **NIfTI** (``.nii``, ``.nii.gz``) are read with MONAI's ``NibabelReader`` and **reoriented to
  RAS** (:data:`COMMON_ORIENTATION`, nibabel's "closest canonical" orientation: axis 0 runs from
  left to *R*ight, axis 1 to *A*nterior, axis 2 to *S*uperior; axis flips and permutations only,
  never a resampling), so an image stored LPS and its mask stored RAS give voxel-aligned arrays.
  A file whose header holds no orientation (``qform_code`` and ``sform_code`` both 0, or a
  degenerate affine) keeps its stored axis order.  A volume gives ``(1, X, Y, Z)``; a 2D image
  stored ``(X, Y)`` gives ``(1, X, Y)``, read as ``(C, H, W)``; a 2D image saved as ``(X, Y, 1)`` is
  squeezed to ``(1, X, Y)`` (the size-1 axis is dropped wherever the reorientation moved it).
  NIfTI files have no channel axis: a 4th axis of size > 1 (time points or channels) is refused
  with the file and its shape, since MedCL does not guess which it holds (a 4th axis of size 1 is
  dropped).  :func:`read_array_with_geometry` also returns the affine (:class:`NiftiGeometry`), and
  :func:`check_same_geometry` refuses an image and a mask whose affines differ after the
  reorientation (spacing, direction or origin beyond :data:`AFFINE_TOLERANCE` mm).  Header fields
  are only read, never copied into any output.
* **DICOM** (a ``.dcm`` file, or a folder of ``.dcm`` files read as one series) is read with
  MONAI's ``PydicomReader(prune_metadata=True)``: slices sorted by ``InstanceNumber``, pixel values
  rescaled by ``RescaleSlope``/``RescaleIntercept`` (CT in **Hounsfield units**, as float32), and
  the array reoriented to RAS from the patient-position tags exactly like a NIfTI file, so a
  series and the same volume saved as NIfTI give equal arrays.  Only the geometry tags are kept
  from the header: patient name, id, birth date and every other identifier are dropped at
  reading and never reach an output (predictions, checkpoints, logs).
* **Raw values** (:func:`read_array`): the file's own dtype, never rescaled; use it for masks and
  label maps.
* **Intensities** (:func:`read_image`, :func:`scale_intensities`): float32 in ``[0, 1]`` by a
  policy of :mod:`data_modules.intensity` (CT windows in HU, MR percentiles, real bit depths).  The
  default ``auto``: uint8 is divided by 255, uint16 by its real bit depth (a PNG's ``sBIT`` chunk,
  else 65535), bool becomes 0/1, anything else (float or other integer NIfTI, DICOM, 32-bit PNG)
  is min-max scaled per image with a warning, once (a constant image becomes all zeros).  NaN or
  infinite pixels are an error naming the file.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "IMAGE_SUFFIXES",
    "is_nifti",
    "is_dicom",
    "is_dicom_series",
    "to_axial",
    "from_axial",
    "file_id",
    "list_image_files",
    "unsupported_files",
    "image_files_by_id",
    "read_array",
    "read_array_with_geometry",
    "NiftiGeometry",
    "check_same_geometry",
    "COMMON_ORIENTATION",
    "AFFINE_TOLERANCE",
    "scale_intensities",
    "read_image",
    "open_npz",
    "CheckedNpz",
]

PathLike = Union[str, Path]

#: file endings MedCL reads as images, longest first where one ends another (``.nii.gz`` before ``.nii``)
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".dcm", ".png", ".jpg", ".jpeg")
_NIFTI_SUFFIXES = (".nii", ".nii.gz")
_DICOM_SUFFIX = ".dcm"
#: the orientation every NIfTI file is reoriented to on reading (axis codes, nibabel's closest canonical)
COMMON_ORIENTATION = ("R", "A", "S")
#: largest difference (in mm, per affine entry) allowed between an image's and its mask's affine after reorientation
AFFINE_TOLERANCE = 1e-3


def is_nifti(path: PathLike) -> bool:
    """Whether ``path`` ends in ``.nii`` or ``.nii.gz`` (any letter case)."""
    return str(path).lower().endswith(_NIFTI_SUFFIXES)


def is_dicom_series(path: PathLike) -> bool:
    """Whether ``path`` is a folder holding ``.dcm`` files and no other (non-hidden) files: one DICOM series."""
    path = Path(path)
    if not path.is_dir():
        return False
    files = [p for p in path.iterdir() if not p.name.startswith(".") and p.is_file()]
    return bool(files) and all(p.name.lower().endswith(_DICOM_SUFFIX) for p in files)


def is_dicom(path: PathLike) -> bool:
    """Whether ``path`` is a ``.dcm`` file or a DICOM series folder (:func:`is_dicom_series`)."""
    return str(path).lower().endswith(_DICOM_SUFFIX) or is_dicom_series(path)


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
    if is_dicom_series(path):
        return name
    suffix = _image_suffix(name)
    return name[: -len(suffix)] if suffix else Path(path).stem


def list_image_files(folder: PathLike, strict: bool = False) -> List[Path]:
    """Image files of ``folder``, sorted by name.

    Not recursive: a sub-folder is listed only if it is a DICOM series (:func:`is_dicom_series`, one
    image), other sub-folders are skipped, and so are hidden files (names starting with ``.``).
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
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if is_dicom_series(path):
                files.append(path)
            continue
        if not path.is_file():
            continue
        if _image_suffix(path.name):
            files.append(path)
        elif strict:
            raise ValueError(
                f"{path}: unsupported file extension, expected one of {list(IMAGE_SUFFIXES)}, found {path.name!r}"
            )
    return files


def unsupported_files(folder: PathLike) -> List[Path]:
    """The (non-hidden) files of ``folder`` that :func:`list_image_files` skips for their ending, sorted by name.

    Raises:
        FileNotFoundError: if the folder does not exist.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"image folder not found: {folder}")
    return [
        path for path in sorted(folder.iterdir())
        if not path.name.startswith(".") and path.is_file() and not _image_suffix(path.name)
    ]


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


@dataclass(frozen=True)
class NiftiGeometry:
    """Where the voxels of an array read from a NIfTI file lie (:func:`read_array_with_geometry`).

    Attributes:
        stored_affine: the file's voxel-to-world affine (4x4, mm), as nibabel reads it.
        stored_axcodes: the file's orientation as stored, e.g. ``("L", "P", "S")``; ``None`` when the
            header holds none (``qform_code`` and ``sform_code`` 0, or a degenerate affine).
        affine: the affine of the array as returned (after the reorientation to
            :data:`COMMON_ORIENTATION`); ``None`` when the orientation is unknown.
    """

    stored_affine: np.ndarray
    stored_axcodes: Optional[Tuple[str, ...]]
    affine: Optional[np.ndarray]


def _fmt_affine(affine: np.ndarray) -> str:
    """The top three rows of an affine on one line: ``[-1 0 0 3; 0 -1 0 4; 0 0 1 0]``."""
    rows = np.round(np.asarray(affine, dtype=np.float64)[:3], 4) + 0.0  # + 0.0: no "-0"
    return "[" + "; ".join(" ".join(f"{v:g}" for v in row) for row in rows) + "]"


def _nifti_array(path: Path, array: np.ndarray, meta) -> Tuple[np.ndarray, NiftiGeometry]:
    """Channel-first array of a NIfTI file reoriented to :data:`COMMON_ORIENTATION`, and its geometry."""
    codes = [meta.get(key) for key in ("qform_code", "sform_code")]
    has_codes = any(code is not None and int(np.asarray(code).reshape(-1)[0]) > 0 for code in codes)
    return _reoriented(path, array, np.asarray(meta.get("affine"), dtype=np.float64), has_codes)


def _reoriented(path: Path, array: np.ndarray, stored: np.ndarray, has_codes: bool) -> Tuple[np.ndarray, NiftiGeometry]:
    """Channel-first array reoriented to :data:`COMMON_ORIENTATION` by its voxel-to-world (RAS) affine, and its geometry."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt2axcodes

    shape = tuple(int(n) for n in array.shape)
    if len(shape) > 3 and any(n != 1 for n in shape[3:]):
        raise ValueError(
            f"{path}: expected a 2D image (X, Y) or a 3D volume (X, Y, Z), found a {len(shape)}D NIfTI of shape {shape}; "
            f"MedCL does not guess whether a 4th axis holds time points or channels: save one volume per file"
            if not is_dicom(path) else
            f"{path}: expected a 2D image or a 3D volume, found a DICOM array of shape {shape}; MedCL reads one single-frame "
            f"series or one multi-frame file per image"
        )
    if len(shape) > 3:
        array = array.reshape(shape[:3])
    two_d = array.ndim == 2 or array.shape[2] == 1
    volume = array[..., None] if array.ndim == 2 else array
    ornt = io_orientation(stored) if stored.shape == (4, 4) and np.isfinite(stored).all() else None
    slice_axis = 2
    if not has_codes or ornt is None or not np.isfinite(ornt).all():
        geometry = NiftiGeometry(stored_affine=stored, stored_axcodes=None, affine=None)
    else:
        axcodes = tuple(ornt2axcodes(ornt))
        affine = stored @ inv_ornt_aff(ornt, volume.shape)
        volume = apply_orientation(volume, ornt)
        slice_axis = int(ornt[2, 0])
        geometry = NiftiGeometry(stored_affine=stored, stored_axcodes=axcodes, affine=affine)
    if two_d:  # a 2D image saved as (X, Y[, 1]): drop the size-1 axis wherever the reorientation put it
        volume = np.squeeze(volume, axis=slice_axis)
    return volume[None], geometry


def read_array_with_geometry(path: PathLike) -> Tuple[np.ndarray, Optional[NiftiGeometry]]:
    """:func:`read_array` plus, for a NIfTI file, its :class:`NiftiGeometry` (``None`` for PNG/JPEG).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: ``"<path>: not a readable image file (<reason>)"`` if the file has another
            ending or cannot be decoded; ``"<path>: expected a 2D image ... found a 4D NIfTI of
            shape ..."`` for a NIfTI with a 4th axis of size > 1.
    """
    from monai.data import NibabelReader, PILReader, PydicomReader

    path = Path(path)
    series = is_dicom_series(path)
    if not path.is_file() and not series:
        if path.is_dir():
            raise ValueError(f"{path}: expected an image file or a DICOM series (a folder of .dcm files only), found a folder")
        raise FileNotFoundError(f"image file not found: {path}")
    dicom = series or is_dicom(path)
    try:
        if not series and not _image_suffix(path.name):
            raise ValueError(f"unsupported ending, expected one of {list(IMAGE_SUFFIXES)}")
        if dicom:  # prune_metadata: only geometry tags are kept, no patient identifier ever leaves the reader
            reader = PydicomReader(prune_metadata=True)
        else:
            reader = NibabelReader() if is_nifti(path) else PILReader(reverse_indexing=False)
        array, meta = reader.get_data(reader.read(str(path)))
        array = np.asarray(array)
    except Exception as err:  # MONAI/PIL/nibabel/pydicom raise many types for unreadable files
        raise ValueError(f"{path}: not a readable image file ({_first_line(err)})") from None
    geometry = None
    if dicom:  # rescaled values (HU for CT) as float32; the affine MONAI built from the position tags is RAS
        affine = np.asarray(meta.get("affine"), dtype=np.float64)
        has_geometry = meta.get("00200037") is not None and meta.get("00200032") is not None
        array, geometry = _reoriented(path, array.astype(np.float32), affine, has_geometry)
    elif is_nifti(path):
        array, geometry = _nifti_array(path, array, meta)
    else:
        channel_dim = meta.get("original_channel_dim")
        if isinstance(channel_dim, (int, np.integer)):
            array = np.moveaxis(array, int(channel_dim), 0)
        else:  # MONAI marks "no channel" with NaN
            array = array[None]
    array = np.ascontiguousarray(array)
    return (array if array.flags.writeable else array.copy()), geometry  # PIL hands out read-only buffers


def read_array(path: PathLike) -> np.ndarray:
    """Read one image or volume as a channel-first, contiguous, writable array with the file's own
    dtype (values never rescaled).

    PNG/JPEG give ``(C, H, W)`` as the picture is seen; NIfTI gives ``(1, X, Y, Z)`` for a volume
    and ``(1, X, Y)`` for a 2D image (also when saved as ``(X, Y, 1)``), reoriented to RAS
    (:data:`COMMON_ORIENTATION`) unless the header holds no orientation; see the module docstring.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: ``"<path>: not a readable image file (<reason>)"`` if the file has another
            ending or cannot be decoded; for a NIfTI with a 4th axis of size > 1, naming its shape.
    """
    return read_array_with_geometry(path)[0]


def to_axial(array: np.ndarray) -> np.ndarray:
    """A channel-first volume ``(C, X, Y, Z)`` as read (RAS) laid out ``(C, Z, Y, X)``: depth along the
    superior axis, so a 2D tower sees axial slices (``TaskSpec.depth_axis = "axial"``).  A view."""
    if array.ndim != 4:
        raise ValueError(f"to_axial: expected a channel-first volume (C, X, Y, Z), found shape {tuple(array.shape)}")
    return array.transpose(0, 3, 2, 1)


def from_axial(volume: np.ndarray) -> np.ndarray:
    """The inverse of :func:`to_axial` for a volume without channels: ``(Z, Y, X)`` -> ``(X, Y, Z)`` (e.g. a predicted mask)."""
    if volume.ndim != 3:
        raise ValueError(f"from_axial: expected a volume (Z, Y, X), found shape {tuple(volume.shape)}")
    return volume.transpose(2, 1, 0)


def check_same_geometry(
    image_path: PathLike,
    image: Optional[NiftiGeometry],
    mask_path: PathLike,
    mask: Optional[NiftiGeometry],
    tolerance: float = AFFINE_TOLERANCE,
) -> None:
    """Refuse an image and its mask (both read with :func:`read_array_with_geometry`) whose voxels
    do not lie on one grid.

    Both arrays are already in :data:`COMMON_ORIENTATION`, so a mask stored LPS and its image stored
    RAS pass; their affines after the reorientation must then agree within ``tolerance`` (mm, per
    entry: spacing, direction and origin).  Nothing is checked when either file is not a NIfTI.
    When only one of the two has an orientation in its header, it must be stored in
    :data:`COMMON_ORIENTATION` (else nothing tells whether the other should be flipped).

    Raises:
        ValueError: ``"<mask_path>: field 'mask' expected the grid of its image <image_path> ..."``,
            naming both files and both stored affines.
    """
    if image is None or mask is None:
        return
    if image.affine is None and mask.affine is None:
        return
    common = "".join(COMMON_ORIENTATION)
    if image.affine is None or mask.affine is None:
        known, known_path, unknown_path = (image, image_path, mask_path) if mask.affine is None else (mask, mask_path, image_path)
        if known.stored_axcodes != COMMON_ORIENTATION:
            raise ValueError(
                f"{mask_path}: field 'mask' cannot be aligned with its image {image_path}: {unknown_path} has no orientation "
                f"in its header (qform_code and sform_code are 0), {known_path} is stored {''.join(known.stored_axcodes)} "
                f"(affine {_fmt_affine(known.stored_affine)}), so nothing tells whether one of them is flipped; "
                f"save both files with their affine"
            )
        return
    if image.affine.shape != mask.affine.shape or not np.allclose(image.affine, mask.affine, rtol=0.0, atol=tolerance):
        raise ValueError(
            f"{mask_path}: field 'mask' expected the grid of its image {image_path} (affines equal within {tolerance:g} mm "
            f"after both are reoriented to {common}), found image affine {_fmt_affine(image.stored_affine)} "
            f"(stored {''.join(image.stored_axcodes)}) and mask affine {_fmt_affine(mask.stored_affine)} "
            f"(stored {''.join(mask.stored_axcodes)}); resample the mask onto the image's grid"
        )


def scale_intensities(array: np.ndarray, source: object, intensity: Any = None) -> np.ndarray:
    """Scale raw pixel values to float32 in ``[0, 1]`` by an intensity policy (:mod:`data_modules.intensity`).

    With the default ``auto``: uint8 / 255, uint16 by the bit depth a PNG ``source``'s ``sBIT`` chunk
    declares (else 65535), bool -> 0/1, any other integer or float dtype min-max per image with a
    warning, once (a constant image becomes all zeros).

    Args:
        array: raw values, e.g. from :func:`read_array`.
        source: what to name in error messages (the file; a PNG path is also read for its ``sBIT`` chunk).
        intensity: a policy or its config form (``None``/``"auto"``, ``"ct:abdomen"``, ``"mr"``, ``"bits:12"``, ...).

    Raises:
        ValueError: on a non-numeric dtype or NaN/infinite values, or values the policy refuses, naming ``source``.
    """
    from data_modules.intensity import parse_intensity, png_significant_bits

    policy = parse_intensity(intensity, where=str(source))
    bits = None
    if policy.kind == "auto" and array.dtype == np.uint16 and isinstance(source, (str, Path)) and str(source).lower().endswith(".png"):
        bits = png_significant_bits(source)
    return policy.apply(array, source, significant_bits=bits)


def read_image(path: PathLike, intensity: Any = None) -> np.ndarray:
    """Read one image or volume as a channel-first float32 array in ``[0, 1]``.

    :func:`read_array` followed by :func:`scale_intensities`: same shapes and axis order as
    :func:`read_array` (PNG/JPEG ``(C, H, W)`` as seen; NIfTI and DICOM ``(C, X, Y[, Z])`` reoriented to RAS).

    Args:
        path: the image file (or DICOM series folder).
        intensity: the intensity policy (:mod:`data_modules.intensity`; default ``auto``).

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if the file cannot be read or holds non-numeric or non-finite values, naming it.
    """
    return np.ascontiguousarray(scale_intensities(read_array(path), Path(path), intensity))


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


def npz_member_shape(path: PathLike, key: str) -> Optional[Tuple[int, ...]]:
    """The shape of array ``key`` in an ``.npz`` file, read from its header only (no data loaded);
    ``None`` if the file or member cannot be read (loading it later reports why)."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive, archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, _, _ = read(member)
            return tuple(int(v) for v in shape)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return None


def declared_image_size(image_size: Optional[int], found: Optional[Tuple[int, int]], where: str) -> Tuple[int, ...]:
    """A data module's ``TaskSpec.image_size``: the given size (square), else the size its images come in.

    Args:
        image_size: the configured size, or ``None``.
        found: ``(H, W)`` read from the data, or ``None`` if unknown yet.
        where: the data module, for errors.

    Raises:
        ValueError: for an image_size that is not an integer >= 8.
    """
    if image_size is None:
        return tuple(found) if found and min(found) >= 8 else ()
    if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8:
        raise ValueError(f"{where}: image_size expected null (the size the images come in) or an integer >= 8, found {image_size!r}")
    return (image_size, image_size)
