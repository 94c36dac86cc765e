"""**SEMI-SYNTHETIC** survival data: :class:`SemiSyntheticSurvivalDataModule`, real MedMNIST images whose
survival times are simulated from their class label (the model and its hazard table are in the
docstring of :mod:`data_modules.survival`)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from data_modules.base import SPLITS, check_subset_sizes, subset_indices
from data_modules.io import open_npz
from data_modules.medmnist import load_medmnist_npz
from data_modules.medmnist_info import MEDMNIST_INFO
from data_modules.survival_base import SurvivalImageDataset, _SurvivalDomain, check_int_arg, harrell_c_index, npy_header
from framework.core.specs import TaskSpec

__all__ = ["SemiSyntheticSurvivalDataModule"]


class SemiSyntheticSurvivalDataModule(_SurvivalDomain):
    """**SEMI-SYNTHETIC** prognosis domain: real MedMNIST images, *simulated* survival.

    The images are real (official MedMNIST ``.npz``, by default OrganAMNIST axial CT slices); the
    survival times are not: each image gets a time drawn from the exponential proportional-hazards
    model in the :mod:`data_modules.survival` docstring, driven by its true class (organ) label, plus
    independent exponential censoring and administrative censoring at ``max_follow_up`` (months).  Use it to
    exercise prognosis heads and losses; do not read its numbers as clinical results.

    Simulation: ``rng = numpy.random.default_rng(simulation_seed)``; for each split in the order
    train, val, test, ``n`` standard exponentials for the event times are drawn, then ``n`` for the
    censoring times, over the *whole* official split.  Subsets (same draw as
    :class:`~data_modules.medmnist.MedMNISTDataModule` with the same ``subset_seed``) then select
    images and their simulated survival together, so an image's simulated time does not depend on
    the subset settings.  ``time_bins`` come from the served training split.

    Args:
        flag: MedMNIST flag of a 2D single-label classification file; ``<data_dir>/<flag>.npz``.
        data_dir: folder holding the file.
        file: explicit path to the ``.npz`` file (overrides ``data_dir``).
        task_name: task name in the stream.
        log_hazard: one log-hazard ratio per class (default: evenly spaced in [-1.5, 1.5] in the
            official label order; table in the :mod:`data_modules.survival` docstring).
        baseline_hazard: baseline event rate per month (> 0).
        censoring_hazard: rate of the exponential censoring per month (>= 0; 0 = only administrative).
        max_follow_up: administrative censoring time in months (> 0).
        simulation_seed: seed of the survival simulation.
        train_subset: use a random subset of this many training images (``None`` = all).
        val_subset: same for validation.
        test_subset: same for test.
        subset_seed: seed of the subset draw.
        num_time_bins: number of quantile cut points for ``time_bins``.
        batch_size: training batch size.
        eval_batch_size: validation/test batch size.
        num_workers: DataLoader workers.
        drop_last: drop the last, incomplete training batch of an epoch (see :class:`DomainDataModule`).

    Raises:
        ValueError: on an unknown, 3D or non-single-label flag, a ``log_hazard`` of the wrong length
            or with non-finite values, non-positive rates or follow-up, invalid subset sizes or
            seeds; on a malformed file (naming the file and field) or a subset larger than its split.
        FileNotFoundError: if the ``.npz`` file does not exist.

    Example::

        dm = SemiSyntheticSurvivalDataModule(train_subset=1000)
        print(dm.description)                  # SEMI-SYNTHETIC: ...
        dm.setup(); dm.reference_scores("test")   # {"oracle_c_index": ...}
    """

    def __init__(
        self,
        flag: str = "organamnist",
        data_dir: str = "data/demo/medmnist",
        file: Optional[str] = None,
        task_name: str = "organamnist_survival_semisynthetic",
        log_hazard: Optional[Sequence[float]] = None,
        baseline_hazard: float = 0.05,
        censoring_hazard: float = 0.02,
        max_follow_up: float = 60.0,
        simulation_seed: int = 0,
        train_subset: Optional[int] = None,
        val_subset: Optional[int] = None,
        test_subset: Optional[int] = None,
        subset_seed: int = 0,
        num_time_bins: int = 16,
        batch_size: int = 64,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        owner = "SemiSyntheticSurvivalDataModule"
        info = MEDMNIST_INFO.get(flag)
        usable = sorted(k for k, v in MEDMNIST_INFO.items() if v["spatial_dims"] == 2 and v["kind"] == "classification")
        if info is None or flag not in usable:
            raise ValueError(
                f"{owner}: flag expected a 2D single-label MedMNIST flag (one of {usable}), found {flag!r}"
            )
        classes = tuple(info["labels"])
        if log_hazard is None:
            log_hazard = np.linspace(-1.5, 1.5, len(classes))
        try:
            hazard = np.asarray(log_hazard, dtype=np.float64)
        except (TypeError, ValueError):
            hazard = None
        if hazard is None or hazard.shape != (len(classes),) or not np.isfinite(hazard).all():
            raise ValueError(
                f"{owner}({flag}): log_hazard expected {len(classes)} finite numbers (one per class: {list(classes)}), "
                f"found {log_hazard!r}"
            )
        for name, value, low in (("baseline_hazard", baseline_hazard, 0.0), ("max_follow_up", max_follow_up, 0.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= low:
                raise ValueError(f"{owner}({flag}): {name} expected a finite number > 0, found {value!r}")
        if (isinstance(censoring_hazard, bool) or not isinstance(censoring_hazard, (int, float))
                or not math.isfinite(censoring_hazard) or censoring_hazard < 0):
            raise ValueError(f"{owner}({flag}): censoring_hazard expected a finite number >= 0, found {censoring_hazard!r}")
        check_int_arg(owner, "simulation_seed", simulation_seed, 0)
        check_int_arg(owner, "subset_seed", subset_seed, 0)
        subsets = check_subset_sizes(f"{owner}({flag})", train_subset, val_subset, test_subset)
        # the risk is defined on the MedMNIST slices themselves: one image source with the flag's own task
        spec = TaskSpec(name=task_name, kind="prognosis", modality=info["modality"], in_channels=info["channels"], spatial_dims=2, domain=flag)
        super().__init__(spec, num_time_bins, batch_size, eval_batch_size, num_workers, drop_last)
        self.flag = flag
        self.path = Path(file) if file else Path(data_dir) / f"{flag}.npz"
        self.class_names = classes
        self.log_hazard = hazard
        self.baseline_hazard = float(baseline_hazard)
        self.censoring_hazard = float(censoring_hazard)
        self.max_follow_up = float(max_follow_up)
        self.simulation_seed = int(simulation_seed)
        self.subsets = subsets
        self.subset_seed = int(subset_seed)
        organ = flag.startswith("organ")
        display = f"Organ{flag[5].upper()}MNIST" if organ else flag
        self.description = (
            f"SEMI-SYNTHETIC: real {display} {info['modality'].upper()} {'slices' if organ else 'images'} (official "
            f"MedMNIST file); survival times simulated from an exponential proportional-hazards model of the "
            f"{'organ' if organ else 'class'} label "
            f"(baseline {self.baseline_hazard}/month, censoring {self.censoring_hazard}/month, follow-up "
            f"{self.max_follow_up:g} months); not real patient outcomes"
        )
        self._sim: Optional[Dict[str, dict]] = None

    def _source(self) -> str:
        return f"{self.path} (semi-synthetic survival)"

    # ------------------------------------------------------------------ simulation (labels only)
    def _read_labels(self) -> Tuple[Dict[str, np.ndarray], int]:
        """Labels of each official split and the image channels, without reading the images."""
        if not self.path.is_file():
            raise FileNotFoundError(f"SemiSyntheticSurvivalDataModule({self.flag}): file not found: {self.path}")
        labels: Dict[str, np.ndarray] = {}
        with open_npz(self.path) as archive:
            for split in SPLITS:
                for key in (f"{split}_images", f"{split}_labels"):
                    if key not in archive.files:
                        raise ValueError(f"{self.path}: missing field '{key}'; found {sorted(archive.files)}")
                array = archive[f"{split}_labels"]
                if array.ndim == 2 and array.shape[1] == 1:
                    array = array[:, 0]
                field = f"{split}_labels"
                if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
                    raise ValueError(f"{self.path}: field '{field}' expected integer labels of shape (N,) or (N, 1), found {array.dtype} {archive[field].shape}")
                if array.size and (array.min() < 0 or array.max() >= len(self.class_names)):
                    raise ValueError(
                        f"{self.path}: field '{field}' expected labels in [0, {len(self.class_names) - 1}], found "
                        f"min {array.min()}, max {array.max()}"
                    )
                labels[split] = array.astype(np.int64)
            shape, _ = npy_header(archive, "train_images")
        channels = shape[-1] if len(shape) == 4 else 1
        return labels, channels

    def _simulation(self) -> Dict[str, dict]:
        if self._sim is not None:
            return self._sim
        labels, channels = self._read_labels()
        self._base_spec = dataclasses.replace(self._base_spec, in_channels=int(channels))
        rng = np.random.default_rng(self.simulation_seed)
        full = {}
        for split in SPLITS:
            label = labels[split]
            n = len(label)
            event_draw = rng.standard_exponential(n)
            censor_draw = rng.standard_exponential(n)
            t_event = event_draw / (self.baseline_hazard * np.exp(self.log_hazard[label]))
            t_censor = censor_draw / self.censoring_hazard if self.censoring_hazard > 0 else np.full(n, np.inf)
            t_censor = np.minimum(t_censor, self.max_follow_up)
            full[split] = {
                "label": label,
                "time": np.minimum(t_event, t_censor),
                "event": (t_event <= t_censor).astype(np.float64),
            }
        lengths = {split: len(full[split]["label"]) for split in SPLITS}
        indices = subset_indices(
            self.subsets, lengths, self.subset_seed, f"SemiSyntheticSurvivalDataModule({self.flag})", self.path
        )
        sim = {}
        for split in SPLITS:
            index = indices[split]
            if index is None:
                index = np.arange(lengths[split])
            sim[split] = {key: value[index] for key, value in full[split].items()}
            sim[split]["index"] = index
        self._sim = sim
        return sim

    def _survival(self, split: str) -> Tuple[np.ndarray, np.ndarray]:
        part = self._simulation()[split]
        return part["time"], part["event"]

    def source_indices(self, split: str) -> np.ndarray:
        """Positions in the official ``split`` of the samples served (identity without a subset)."""
        self._check_split(split)
        return self._simulation()[split]["index"].copy()

    def labels(self, split: str) -> np.ndarray:
        """True class labels of the samples of ``split``."""
        self._check_split(split)
        return self._simulation()[split]["label"].copy()

    def true_log_hazard(self, split: str) -> np.ndarray:
        """The simulation's true log-hazard ratio of each sample of ``split`` (``log_hazard[label]``)."""
        return self.log_hazard[self.labels(split)]

    def reference_scores(self, split: str) -> Dict[str, float]:
        """``{"oracle_c_index": c}``: Harrell's C-index of the true log-hazard against the simulated data.

        The best a model can be expected to do on ``split`` (ties in risk, i.e. same organ, count 1/2).
        """
        self._check_split(split)
        time, event = self._survival(split)
        return {"oracle_c_index": harrell_c_index(self.true_log_hazard(split), time, event)}

    # ------------------------------------------------------------------ images
    def setup(self, stage: Optional[str] = None) -> None:
        if self._datasets:
            return
        sim = self._simulation()
        _ = self.task_spec
        arrays = load_medmnist_npz(self.path, len(self.class_names))
        for split in SPLITS:
            part = sim[split]
            if not np.array_equal(arrays[f"{split}_labels"][part["index"]], part["label"]):
                raise ValueError(f"{self.path}: field '{split}_labels' changed while the module was in use; rebuild the module")
            images = arrays[f"{split}_images"][part["index"]]
            images = images[:, None] if images.ndim == 3 else np.moveaxis(images, -1, 1)
            self._datasets[split] = SurvivalImageDataset(images, part["time"], part["event"])
        self._warn_if_degenerate()
