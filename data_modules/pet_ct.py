"""**SEMI-SYNTHETIC** PET/CT lesion segmentation on real MedMNIST CT slices.

No real PET data ships with this repository.  :class:`SemiSyntheticPETCTDataModule` builds a lesion
segmentation task whose CT channel is a *real* slice (official MedMNIST ``.npz``, by default
OrganAMNIST axial CT) with a *synthetic* lesion painted in, and whose optional second channel is a
*synthetic* PET-like uptake map derived from the lesion mask.  It exists to show that a model that
takes both channels (a new 2-channel patch embedding) segments better than a CT-only model at the
same budget; its numbers say nothing about patients.

Generation, per sample (deterministic: ``rng = numpy.random.default_rng([seed, split_id, index])``
with ``split_id`` 0/1/2 for train/val/test and ``index`` the sample's position in the *official*
split, so subsets and channel choices never change any other sample)::

    x      = slice / 255                               real CT in [0, 1]
    body   = x > 0.1                                   (whole image if fewer than 20 pixels)
    mask   = one ellipse: semi-axes ~ U(lesion_radius), angle ~ U(0, pi), centre uniform among body
             pixels >= 2 px from the border (the centre pixel is always inside: >= 1 foreground pixel)
    s      = +1 or -1 with probability 1/2             hyper- or hypodense lesion
    CT     = clip(x + ct_contrast * s * mask + N(0, ct_noise^2), 0, 1)          (subtle on purpose)
    PET    = clip(G_pet_blur * (0.15 * body + pet_uptake * (mask + decoy)) + N(0, pet_noise^2), 0, 1)

``decoy`` ("physiological uptake") is present with probability ``decoy_probability``: another
ellipse of the same size distribution, centred in the body and not touching the lesion, with the
lesion's uptake; it is in neither the mask nor the CT, so PET alone cannot tell it from the lesion
and CT alone barely shows the lesion.  ``G_sigma`` is a Gaussian blur (``scipy.ndimage``).  The
random draws come in this order: lesion, ``s``, CT noise, PET noise, decoy; so the CT channel and
the mask do not depend on ``channels`` or on any PET argument, and ``decoy_probability`` changes
only the decoy.  Images are stored as uint8 ``(N, C, H, W)`` (``round(v * 255)``, channel order as
in ``channels``), masks as uint8 ``(N, H, W)`` with values {0, 1}.
"""
from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from data_modules.base import SPLITS, DomainDataModule, check_subset_sizes, subset_indices
from data_modules.io import open_npz
from data_modules.medmnist_info import official_url
from data_modules.segmentation import SegmentationDataset
from framework.core.specs import TaskSpec

__all__ = ["SemiSyntheticPETCTDataModule", "CHANNELS"]

#: channels the module can produce, in any order; "ct" is required
CHANNELS = ("ct", "pet")

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*$")
_FLAG_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-]*$")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_BODY_THRESHOLD = 0.1
_MIN_BODY_PIXELS = 20
_BORDER = 2
_BODY_PET = 0.15
_DECOY_TRIES = 20
_PROGRESS_ABOVE = 5000


def _ellipse(shape: Tuple[int, int], centre: Tuple[int, int], axes: Tuple[float, float], angle: float) -> np.ndarray:
    """Boolean ellipse with semi-axes ``axes`` (px) rotated by ``angle`` (radians) around ``centre``."""
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    dy, dx = rows - centre[0], cols - centre[1]
    u = dx * math.cos(angle) + dy * math.sin(angle)
    v = -dx * math.sin(angle) + dy * math.cos(angle)
    return (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1.0


class SemiSyntheticPETCTDataModule(DomainDataModule):
    """**SEMI-SYNTHETIC** lesion segmentation: real CT slices, synthetic lesions and synthetic PET.

    See the module docstring for the generative model.  The :attr:`task_spec` (kind
    ``"segmentation"``, one label ``"lesion"``, ``in_channels = len(channels)``) is known right after
    construction; samples are generated in :meth:`setup`, only for the samples served (the subset is
    drawn first with :func:`~data_modules.base.subset_indices`), so a 3,000-sample subset is fast.
    For a fair CT-only baseline, build a second module with ``channels=["ct"]`` and the same
    ``seed``/subset arguments: its CT channel and masks are identical to the ``["ct", "pet"]`` ones.

    Args:
        flag: a 2D grayscale MedMNIST flag; the images are read from ``<data_dir>/<flag>.npz``.
        data_dir: folder holding the file.
        channels: image channels in order, a non-empty list of unique names from ``("ct", "pet")``
            that includes ``"ct"``.
        task_name: task name in the stream (default ``"ct_pet_lesion_semisynthetic"`` with PET,
            ``"ct_lesion_semisynthetic"`` without).
        modality: modality of the spec (default ``"pet_ct"`` with PET, ``"ct"`` without).
        ct_contrast: lesion intensity change on CT (>= 0; sign drawn per sample).
        ct_noise: std of the Gaussian noise added to CT (>= 0).
        pet_uptake: PET uptake of the lesion and of the decoy (>= 0; body background is 0.15).
        pet_blur: sigma in px of the Gaussian blur of PET (>= 0; 0 = none).
        pet_noise: std of the Gaussian noise added to PET (>= 0).
        decoy_probability: probability of a physiological-uptake decoy on PET, in [0, 1].
        lesion_radius: ``(low, high)`` range of the lesion's semi-axes in px, ``0 < low <= high``.
        seed: seed of the generation (integer >= 0).
        augment: random flips/90-degree rotations of the training split (never val/test).
        train_subset: use a random subset of this many training slices (``None`` = all).
        val_subset: same for validation.
        test_subset: same for test.
        subset_seed: seed of the subset draw (integer >= 0).
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader workers.
        drop_last: drop the last, incomplete training batch of an epoch (see :class:`DomainDataModule`).

    Raises:
        ValueError: on invalid arguments (the message names the argument, what was expected and what
            was found); in :meth:`setup`, on a malformed file (naming the file and field, e.g. RGB or
            3D images where ``(N, H, W)`` grayscale slices are expected) or a subset larger than its
            split.
        FileNotFoundError: in :meth:`setup`, if ``<data_dir>/<flag>.npz`` does not exist.

    Example::

        dm = SemiSyntheticPETCTDataModule(train_subset=3000, val_subset=500, test_subset=1000)
        print(dm.description)                  # SEMI-SYNTHETIC: ...
        dm.setup()
        batch = next(iter(dm.loader("train")))  # {"ct_pet_lesion_semisynthetic": {"image": (32, 2, 28, 28), "target": (32, 28, 28)}}
    """

    def __init__(
        self,
        flag: str = "organamnist",
        data_dir: str = "../shared/data/medmnist",
        channels: Sequence[str] = ("ct", "pet"),
        task_name: Optional[str] = None,
        modality: Optional[str] = None,
        ct_contrast: float = 0.08,
        ct_noise: float = 0.02,
        pet_uptake: float = 0.8,
        pet_blur: float = 1.0,
        pet_noise: float = 0.05,
        decoy_probability: float = 0.5,
        lesion_radius: Sequence[float] = (2.0, 4.0),
        seed: int = 0,
        augment: bool = True,
        train_subset: Optional[int] = None,
        val_subset: Optional[int] = None,
        test_subset: Optional[int] = None,
        subset_seed: int = 0,
        batch_size: int = 32,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size, num_workers=num_workers, drop_last=drop_last)
        me = "SemiSyntheticPETCTDataModule"
        if not isinstance(flag, str) or not _FLAG_RE.match(flag):
            raise ValueError(f"{me}: flag expected a MedMNIST flag name such as 'organamnist', found {flag!r}")
        if not isinstance(data_dir, (str, os.PathLike)) or not str(data_dir):
            raise ValueError(f"{me}: data_dir expected a non-empty folder path, found {data_dir!r}")
        if (
            isinstance(channels, str)
            or not isinstance(channels, (list, tuple))
            or not channels
            or any(c not in CHANNELS for c in channels)
        ):
            unknown = [c for c in channels if c not in CHANNELS] if isinstance(channels, (list, tuple)) else []
            names = ", ".join(repr(c) for c in unknown)
            what = f" ({names} {'is' if len(unknown) == 1 else 'are'} not a channel it can make)" if unknown else ""
            raise ValueError(f"{me}: channels expected a non-empty list of names from {list(CHANNELS)}, found {channels!r}{what}")
        if len(set(channels)) != len(channels):
            raise ValueError(f"{me}: channels expected unique names, found {list(channels)!r}")
        if "ct" not in channels:
            raise ValueError(f"{me}: channels expected to include 'ct' (the real slice), found {list(channels)!r}")
        pet = "pet" in channels
        task_name = task_name if task_name is not None else ("ct_pet_lesion_semisynthetic" if pet else "ct_lesion_semisynthetic")
        if not isinstance(task_name, str) or not _NAME_RE.match(task_name):
            raise ValueError(
                f"{me}: task_name expected None or an identifier of letters, digits, '_' or '-' starting with a letter, "
                f"found {task_name!r}"
            )
        modality = modality if modality is not None else ("pet_ct" if pet else "ct")
        if not isinstance(modality, str) or not modality:
            raise ValueError(f"{me}: modality expected None or a non-empty string, found {modality!r}")
        for name, value in (
            ("ct_contrast", ct_contrast), ("ct_noise", ct_noise), ("pet_uptake", pet_uptake),
            ("pet_blur", pet_blur), ("pet_noise", pet_noise),
        ):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{me}: {name} expected a finite number >= 0, found {value!r}")
        if (
            isinstance(decoy_probability, bool)
            or not isinstance(decoy_probability, (int, float))
            or not 0.0 <= decoy_probability <= 1.0
        ):
            raise ValueError(f"{me}: decoy_probability expected a number in [0, 1], found {decoy_probability!r}")
        radius_ok = (
            isinstance(lesion_radius, (list, tuple))
            and len(lesion_radius) == 2
            and all(isinstance(r, (int, float)) and not isinstance(r, bool) and math.isfinite(r) for r in lesion_radius)
            and 0 < lesion_radius[0] <= lesion_radius[1]
        )
        if not radius_ok:
            raise ValueError(f"{me}: lesion_radius expected a pair (low, high) of numbers with 0 < low <= high, found {lesion_radius!r}")
        for name, value in (("seed", seed), ("subset_seed", subset_seed)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{me}: {name} expected an integer >= 0, found {value!r}")
        if not isinstance(augment, bool):
            raise ValueError(f"{me}: augment expected true or false, found {augment!r}")
        subsets = check_subset_sizes(me, train_subset, val_subset, test_subset)

        self.flag = flag
        self.path = Path(data_dir) / f"{flag}.npz"
        self.channels = tuple(channels)
        self.ct_contrast = float(ct_contrast)
        self.ct_noise = float(ct_noise)
        self.pet_uptake = float(pet_uptake)
        self.pet_blur = float(pet_blur)
        self.pet_noise = float(pet_noise)
        self.decoy_probability = float(decoy_probability)
        self.lesion_radius = (float(lesion_radius[0]), float(lesion_radius[1]))
        self.seed = int(seed)
        self.augment = augment
        self.subsets = subsets
        self.subset_seed = int(subset_seed)
        self.description = (
            f"SEMI-SYNTHETIC: real {flag} CT slices (official MedMNIST file) with a synthetic elliptical lesion "
            f"(CT contrast +/-{self.ct_contrast:g})"
            + (f" and a synthetic PET-like channel (lesion uptake {self.pet_uptake:g}, decoy probability "
               f"{self.decoy_probability:g})" if pet else "")
            + "; not real patient data"
        )
        self._spec = TaskSpec(
            name=task_name,
            kind="segmentation",
            modality=modality,
            label_names=("lesion",),
            in_channels=len(self.channels),
            spatial_dims=2,
        )
        self._indices: Dict[str, np.ndarray] = {}
        self._datasets: Dict[str, SegmentationDataset] = {}

    @property
    def task_spec(self) -> TaskSpec:
        return self._spec

    # ------------------------------------------------------------------ generation
    def generate(self, image: np.ndarray, split: str, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """One sample from a real uint8 slice ``image`` ``(H, W)`` at position ``index`` of ``split``.

        Returns:
            ``(channels, mask)``: uint8 ``(C, H, W)`` in the order of ``channels``, uint8 ``(H, W)`` in {0, 1}.
        """
        from scipy.ndimage import binary_dilation, gaussian_filter

        rng = np.random.default_rng([self.seed, _SPLIT_IDS[split], int(index)])
        x = image.astype(np.float64) / 255.0
        shape = x.shape
        body = x > _BODY_THRESHOLD
        if body.sum() < _MIN_BODY_PIXELS:
            body = np.ones(shape, dtype=bool)
        interior = np.zeros(shape, dtype=bool)
        interior[_BORDER: shape[0] - _BORDER, _BORDER: shape[1] - _BORDER] = True
        centres = np.argwhere(body & interior)
        if len(centres) == 0:  # body only at the border
            centres = np.argwhere(interior)

        def draw_ellipse(candidates: np.ndarray) -> np.ndarray:
            centre = candidates[rng.integers(len(candidates))]
            axes = rng.uniform(*self.lesion_radius, size=2)
            return _ellipse(shape, (int(centre[0]), int(centre[1])), (axes[0], axes[1]), rng.uniform(0.0, math.pi))

        lesion = draw_ellipse(centres)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        ct = np.clip(x + self.ct_contrast * sign * lesion + self.ct_noise * rng.standard_normal(shape), 0.0, 1.0)
        out = [ct]
        if "pet" in self.channels:
            pet_noise = rng.standard_normal(shape)
            uptake = _BODY_PET * body + self.pet_uptake * lesion
            if rng.random() < self.decoy_probability:
                near = binary_dilation(lesion, iterations=1)
                free = centres[~near[centres[:, 0], centres[:, 1]]]
                for _ in range(_DECOY_TRIES if len(free) else 0):
                    decoy = draw_ellipse(free)
                    if not (decoy & near).any():
                        uptake = uptake + self.pet_uptake * decoy
                        break
            if self.pet_blur > 0:
                uptake = gaussian_filter(uptake, sigma=self.pet_blur, mode="constant")
            pet = np.clip(uptake + self.pet_noise * pet_noise, 0.0, 1.0)
            out = [ct if c == "ct" else pet for c in self.channels]
        return np.round(np.stack(out) * 255.0).astype(np.uint8), lesion.astype(np.uint8)

    def _read_images(self) -> Dict[str, np.ndarray]:
        owner = f"SemiSyntheticPETCTDataModule({self.flag})"
        if not self.path.is_file():
            raise FileNotFoundError(
                f"{owner}: file not found: {self.path} (cwd {os.getcwd()}); download the official MedMNIST file "
                f"{official_url(self.flag)} into {self.path.parent}, or `pip install medmnist` and use its download "
                f"(e.g. medmnist.OrganAMNIST(split='train', download=True, root='{self.path.parent}')), or pass data_dir"
            )
        images = {}
        with open_npz(self.path) as archive:
            keys = [f"{split}_images" for split in SPLITS]
            missing = [k for k in keys if k not in archive.files]
            if missing:
                raise ValueError(f"{self.path}: missing key(s) {missing}; expected {keys}, found {sorted(archive.files)}")
            for split, key in zip(SPLITS, keys):
                array = archive[key]
                if array.ndim != 3:
                    raise ValueError(
                        f"{self.path}: field '{key}' expected (N, H, W) grayscale 2D slices, found shape {array.shape} "
                        f"({'RGB images' if array.ndim == 4 and array.shape[-1] == 3 else '3D volumes or another layout'}); "
                        f"use a 2D grayscale CT flag such as organamnist"
                    )
                if array.dtype != np.uint8:
                    raise ValueError(f"{self.path}: field '{key}' expected dtype uint8, found {array.dtype}")
                if min(array.shape[1:]) < 2 * _BORDER + 1:
                    raise ValueError(f"{self.path}: field '{key}' expected slices of at least 5 x 5 px, found shape {array.shape}")
                images[split] = array
        return images

    def setup(self, stage: Optional[str] = None) -> None:
        """Read the real slices and generate the served samples of every split (idempotent).

        Raises:
            FileNotFoundError: if ``<data_dir>/<flag>.npz`` does not exist.
            ValueError: on a malformed file or a subset larger than its split.
        """
        if self._datasets:
            return
        from tqdm.auto import tqdm

        images = self._read_images()
        lengths = {split: len(images[split]) for split in SPLITS}
        indices = subset_indices(
            self.subsets, lengths, self.subset_seed, f"SemiSyntheticPETCTDataModule({self.flag})", self.path
        )
        datasets, served = {}, {}
        for split in SPLITS:
            index = indices[split] if indices[split] is not None else np.arange(lengths[split])
            n = len(index)
            h, w = images[split].shape[1:]
            out_images = np.empty((n, len(self.channels), h, w), dtype=np.uint8)
            out_masks = np.empty((n, h, w), dtype=np.uint8)
            for k in tqdm(range(n), desc=f"generating {split}", leave=False, disable=n <= _PROGRESS_ABOVE):
                i = int(index[k])
                out_images[k], out_masks[k] = self.generate(images[split][i], split, i)
            served[split] = index
            datasets[split] = SegmentationDataset(out_images, out_masks, spatial_dims=2, augment=self.augment and split == "train", serve_uint8=True)
        self._indices, self._datasets = served, datasets

    def source_indices(self, split: str) -> np.ndarray:
        """Positions in the official ``split`` of the samples served (after :meth:`setup`)."""
        self.dataset(split)
        return self._indices[split].copy()

    def dataset(self, split: str) -> SegmentationDataset:
        if split not in SPLITS:
            raise ValueError(f"SemiSyntheticPETCTDataModule({self.name}): split expected one of {list(SPLITS)}, found {split!r}")
        if not self._datasets:
            raise RuntimeError(f"SemiSyntheticPETCTDataModule({self.name}): call setup() before asking for datasets")
        return self._datasets[split]
