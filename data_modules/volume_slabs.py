"""One volume larger than memory, slab by slab: a NIfTI read and a mask written in axial slabs.

A 512 x 512 x 1000 CT is 1 GB as float32 before any model sees it, and its logits several times
that.  :class:`NiftiSlabs` reads an uncompressed NIfTI a few axial slices at a time (nibabel's
array proxy reads only the bytes of those slices), reoriented to RAS and scaled by a voxel-wise
intensity policy, laid out like every MedCL volume (``(C, Z, Y, X)``, :func:`data_modules.io.to_axial`);
:class:`NiftiSlabWriter` writes predicted labels (or any volume) slab by slab into an uncompressed
NIfTI on the input's grid.  With :func:`framework.volume_inference.segment_volume_slabs` peak memory
is one slab, whatever the number of slices (``benchmarks/volume_memory.py`` measures it).

Both use positioned file reads and writes, not memory maps: every page of a memory map the process
has touched counts in its resident set until the map is closed, so a memory-mapped volume looks
(to RSS limits of schedulers and containers) as if it were held whole.

A ``.nii.gz`` works too, but gzip cannot seek: nibabel decompresses from the start of the file for
every slab (memory stays bounded, time grows with the square of the slab count): store large
volumes as ``.nii``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator, Optional, Tuple, Union

import numpy as np
import torch

from data_modules.intensity import parse_intensity

__all__ = ["NiftiSlabs", "NiftiSlabWriter"]

PathLike = Union[str, Path]


class NiftiSlabs:
    """Axial slabs ``(start, Tensor[C=1, k, Y, X])`` of a NIfTI volume, read on demand.

    Args:
        path: a 3D NIfTI file stored axially (its third stored axis runs along the patient's
            superior-inferior axis, as CT and most MR are exported).
        slab: slices per slab.
        intensity: a voxel-wise intensity policy (``ct:<window>``, ``range:<low>,<high>``,
            ``bits:<n>``): whole-volume statistics (``mr``, ``minmax``, ``auto`` min-max) would need
            every slice first and are refused.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: for a file that is not a 3D NIfTI, one stored in another plane, a slab < 1 or
            a policy that needs the whole volume (each naming the file or field).
    """

    def __init__(self, path: PathLike, slab: int = 16, intensity: Any = "ct:abdomen") -> None:
        import nibabel as nib
        from nibabel.orientations import inv_ornt_aff, io_orientation

        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"volume not found: {self.path}")
        if isinstance(slab, bool) or not isinstance(slab, int) or slab < 1:
            raise ValueError(f"NiftiSlabs: slab expected a positive integer, found {slab!r}")
        self.policy = parse_intensity(intensity, where=str(self.path))
        if self.policy.kind not in ("ct", "range", "bits"):
            raise ValueError(
                f"{self.path}: field 'intensity' expected a voxel-wise policy for slab-by-slab reading ('ct:<window>', "
                f"'range:<low>,<high>' or 'bits:<n>'), found {self.policy.describe()!r}, which needs the whole volume's statistics"
            )
        self.image = nib.load(str(self.path), mmap=False)  # slicing dataobj reads only the slab's bytes (nibabel fileslice)
        shape = tuple(int(n) for n in self.image.shape)
        if len(shape) != 3:
            raise ValueError(f"{self.path}: expected a 3D volume (X, Y, Z), found a NIfTI of shape {shape}")
        self.ornt = io_orientation(self.image.affine)
        if int(self.ornt[2, 0]) != 2:
            raise ValueError(
                f"{self.path}: expected a volume stored in axial slices (third stored axis along superior-inferior), found "
                f"orientation {''.join(nib.aff2axcodes(self.image.affine))}; read it whole with data_modules.io.read_array"
            )
        self.slab = slab
        self.stored_shape = shape
        #: the RAS affine of the reoriented array (what predicted masks are written with)
        self.affine = self.image.affine @ inv_ornt_aff(self.ornt, shape)
        ras = [0, 0, 0]
        for stored_axis, (ras_axis, _) in enumerate(self.ornt):
            ras[int(ras_axis)] = shape[stored_axis]
        #: ``(X, Y, Z)`` of the volume in RAS
        self.shape: Tuple[int, int, int] = tuple(ras)

    def __len__(self) -> int:
        return -(-self.shape[2] // self.slab)

    def read(self, start: int, stop: int) -> torch.Tensor:
        """RAS slices ``start:stop`` along Z, scaled, as ``(1, stop - start, Y, X)`` float32."""
        from nibabel.orientations import apply_orientation

        n = self.stored_shape[2]
        flipped = int(self.ornt[2, 1]) == -1
        lo, hi = (n - stop, n - start) if flipped else (start, stop)
        raw = np.asarray(self.image.dataobj[:, :, lo:hi])  # only these slices are read from the file
        ras = apply_orientation(raw, self.ornt)  # flips (incl. within the slab along Z) and the in-plane permutation
        scaled = self.policy.apply(ras[None], self.path)
        return torch.from_numpy(np.ascontiguousarray(scaled.transpose(0, 3, 2, 1)))  # (1, k, Y, X)

    def __iter__(self) -> Iterator[Tuple[int, torch.Tensor]]:
        for start in range(0, self.shape[2], self.slab):
            yield start, self.read(start, min(start + self.slab, self.shape[2]))


class NiftiSlabWriter:
    """A volume written slab by slab into an uncompressed NIfTI (predicted labels as uint8 by default; RAS, the given affine).

    nibabel writes whole arrays only; the header is written by nibabel and each slab's voxels are
    then written at their place in the file: in NIfTI's Fortran order an axial slab ``(X, Y, k)`` is
    one contiguous run of bytes, the same bytes as the slab laid out ``(k, Y, X)`` in C order.

    Args:
        path: the ``.nii`` file to create (an existing file is never overwritten).
        shape: ``(X, Y, Z)`` in RAS.
        affine: the RAS affine (e.g. :attr:`NiftiSlabs.affine`).
        dtype: the voxel type (uint8 labels; int16 for CT in HU).

    Raises:
        FileExistsError: if ``path`` exists.
        ValueError: if ``path`` does not end in ``.nii``.
    """

    def __init__(self, path: PathLike, shape: Tuple[int, int, int], affine: Optional[np.ndarray] = None, dtype: Any = np.uint8) -> None:
        import nibabel as nib

        self.path = Path(path)
        if not self.path.name.endswith(".nii"):
            raise ValueError(f"NiftiSlabWriter: path expected a file ending in .nii (uncompressed, written slab by slab), found {self.path.name!r}")
        if self.path.exists():
            raise FileExistsError(f"{self.path}: exists; MedCL never overwrites a prediction: choose another path")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        header = nib.Nifti1Header()
        header.set_data_shape(tuple(int(n) for n in shape))
        header.set_data_dtype(dtype)
        header.set_qform(np.eye(4) if affine is None else affine, code=1)
        header.set_sform(np.eye(4) if affine is None else affine, code=1)
        offset = 352  # the NIfTI-1 single-file header plus its 4-byte extension flag
        header["vox_offset"] = offset
        with open(self.path, "xb") as fh:
            header.write_to(fh)
            fh.write(b"\0" * (offset - fh.tell()))
            fh.truncate(offset + int(np.prod(shape)) * np.dtype(dtype).itemsize)
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._offset = offset
        self._file = open(self.path, "r+b")

    def write(self, start: int, values: np.ndarray) -> None:
        """Axial slices ``start:start + k`` laid out ``(k, Y, X)`` (as :class:`NiftiSlabs` serves them).

        Raises:
            ValueError: if the slab's in-plane shape is not ``(Y, X)`` or it reaches past the last slice.
        """
        x, y, z = self.shape
        values = np.asarray(values)
        if values.ndim != 3 or values.shape[1:] != (y, x) or start < 0 or start + values.shape[0] > z:
            raise ValueError(f"{self.path}: expected slices {start}.. laid out (k, {y}, {x}) within {z} slices, found shape {values.shape}")
        self._file.seek(self._offset + start * x * y * self.dtype.itemsize)
        self._file.write(np.ascontiguousarray(values, dtype=self.dtype).tobytes())

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()

    def __enter__(self) -> "NiftiSlabWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
