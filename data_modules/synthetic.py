"""Synthetic CT on disk, for tests, scale benchmarks and trying MedCL without patient data.

Nothing here is real patient data: volumes are generated (a body-shaped ellipse of soft tissue in
air, with a denser "organ" whose mask is returned), in Hounsfield units, and written as NIfTI
files or as DICOM series, so the readers, intensity windows, reorientation and lazy loaders run on
the formats a hospital exports.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["synthetic_ct", "write_nifti", "write_dicom_series", "write_large_ct"]

PathLike = Union[str, Path]


def synthetic_ct(shape: Sequence[int], seed: int = 0, organ_hu: float = 60.0) -> Tuple[np.ndarray, np.ndarray]:
    """A CT-like volume in HU and its organ mask, both ``(X, Y, Z)``.

    Air (-1000 HU) outside an elliptic body of soft tissue (-40 HU), a spherical "organ" of
    ``organ_hu`` whose position depends on ``seed``, and Gaussian noise (sd 10 HU), floored at -1024 HU.

    Args:
        shape: ``(X, Y, Z)`` voxels.
        seed: random seed (organ position, noise).
        organ_hu: the organ's mean HU.

    Returns:
        ``(volume float32 HU, mask uint8 0/1)``.
    """
    rng = np.random.default_rng(seed)
    x, y, z = (np.linspace(-1, 1, int(n), dtype=np.float32) for n in shape)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    body = (xx / 0.85) ** 2 + (yy / 0.7) ** 2 < 1.0
    volume = np.full(tuple(int(n) for n in shape), -1000.0, dtype=np.float32)
    volume[body] = -40.0
    centre = rng.uniform(-0.35, 0.35, size=3).astype(np.float32)
    centre[2] = z[int(rng.integers(len(z) // 4, max(len(z) // 4 + 1, (3 * len(z)) // 4)))]  # on a slice: never an empty mask
    radius = float(rng.uniform(0.2, 0.3))
    mask = ((xx[..., None] - centre[0]) ** 2 + (yy[..., None] - centre[1]) ** 2 + (z[None, None] - centre[2]) ** 2) < radius ** 2
    mask &= body[..., None]
    volume[mask] = organ_hu
    volume += rng.normal(0.0, 10.0, size=volume.shape).astype(np.float32)
    np.maximum(volume, -1024.0, out=volume)  # scanners floor at -1024 HU
    return volume, mask.astype(np.uint8)


def write_nifti(path: PathLike, array: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), affine: Optional[np.ndarray] = None) -> Path:
    """Write ``array`` ``(X, Y[, Z])`` as NIfTI (RAS affine ``diag(spacing)`` unless ``affine`` is given)."""
    import nibabel as nib

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if affine is None:
        affine = np.diag([*[float(s) for s in spacing][:3], 1.0])
    nib.save(nib.Nifti1Image(np.asarray(array), affine), str(path))
    return path


def write_dicom_series(
    folder: PathLike,
    volume_hu: np.ndarray,
    spacing: Sequence[float] = (0.8, 0.8, 2.5),
    origin: Sequence[float] = (-100.0, -120.0, 40.0),
    patient_name: str = "ANONYMOUS",
    patient_id: str = "SYNTHETIC",
    intercept: float = -1024.0,
) -> Path:
    """Write a CT volume in HU as a DICOM series, one ``.dcm`` file per slice (axial, LPS, as scanners export).

    ``volume_hu[i, j, k]`` is the voxel at DICOM column ``i``, row ``j``, slice ``k``: patient
    position ``origin + (i * spacing[0], j * spacing[1], k * spacing[2])`` in LPS mm (image
    orientation ``[1, 0, 0, 0, 1, 0]``).  Stored values are ``HU - intercept`` as uint16 with
    ``RescaleIntercept = intercept``.  The patient name and id are written into every file (use them
    to check that they reach no output).

    Args:
        folder: the series folder (created).
        volume_hu: ``(X, Y, Z)`` = (columns, rows, slices) in HU.
        spacing: column, row and slice spacing in mm.
        origin: the first voxel's LPS position in mm.
        patient_name, patient_id: written into the header.
        intercept: the rescale intercept.

    Returns:
        The folder.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    volume_hu = np.asarray(volume_hu, dtype=np.float32)
    stored = np.clip(np.round(volume_hu - intercept), 0, 65535).astype(np.uint16)
    series_uid, study_uid, frame_uid = generate_uid(), generate_uid(), generate_uid()
    columns, rows, slices = stored.shape
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"slice_{k:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study_uid, series_uid, frame_uid
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = patient_name, patient_id, "19700101"
        ds.Modality = "CT"
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [float(origin[0]), float(origin[1]), float(origin[2]) + k * float(spacing[2])]
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing, column spacing
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = rows, columns
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleIntercept, ds.RescaleSlope = float(intercept), 1.0
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()  # (rows, columns) in row-major order
        ds.save_as(str(path), enforce_file_format=True)
    return folder


def write_large_ct(path: PathLike, shape: Sequence[int] = (512, 512, 300), spacing: Sequence[float] = (0.7, 0.7, 2.5),
                   seed: int = 0, slab: int = 16, mask_path: Optional[PathLike] = None) -> Path:
    """Write a large synthetic CT (int16 HU, uncompressed ``.nii``, RAS) slab by slab, never holding the whole volume.

    The same body, organ and noise model as :func:`synthetic_ct`, generated ``slab`` axial slices at a
    time (the organ is a sphere of radius 0.25 at a ``seed``-dependent centre), so volumes far
    larger than memory can be made for scale tests.  With ``mask_path``, the organ's mask is written
    there too (uint8, the same grid).

    Returns:
        The file.
    """
    from data_modules.volume_slabs import NiftiSlabWriter

    shape = tuple(int(n) for n in shape)
    rng = np.random.default_rng(seed)
    centre = rng.uniform(-0.3, 0.3, size=3)
    x, y, z = (np.linspace(-1, 1, n, dtype=np.float32) for n in shape)
    xx, yy = np.meshgrid(x, y, indexing="ij")
    body = (xx / 0.85) ** 2 + (yy / 0.7) ** 2 < 1.0
    affine = np.diag([*[float(s) for s in spacing], 1.0])
    masks = NiftiSlabWriter(mask_path, shape, affine=affine) if mask_path is not None else None
    with NiftiSlabWriter(path, shape, affine=affine, dtype=np.int16) as writer:
        for start in range(0, shape[2], slab):
            zs = z[start:start + slab]
            block = np.full((*shape[:2], len(zs)), -1000.0, dtype=np.float32)
            block[body] = -40.0
            organ = ((xx[..., None] - centre[0]) ** 2 + (yy[..., None] - centre[1]) ** 2 + (zs[None, None] - centre[2]) ** 2) < 0.25 ** 2
            block[organ & body[..., None]] = 60.0
            block += rng.normal(0.0, 10.0, size=block.shape).astype(np.float32)
            writer.write(start, np.maximum(np.round(block), -1024).astype(np.int16).transpose(2, 1, 0))
            if masks is not None:
                masks.write(start, (organ & body[..., None]).astype(np.uint8).transpose(2, 1, 0))
    if masks is not None:
        masks.close()
    return Path(path)
