"""Survival (prognosis) domains: images with a right-censored ``(time, event)`` target.

Items are ``{"image": Tensor[C, H, W] (or [C, D, H, W]), "target": FloatTensor[2]}`` with
``target = (time, event)``; ``image`` is uint8 (0..255, value ``v`` means ``v / 255``; the backbone
converts it) when the source is uint8 (``.npz`` files, 8-bit image folders, the semi-synthetic
MedMNIST images), else float32 in ``[0, 1]`` (see :mod:`data_modules.base`); ``event`` is 1.0
when the event was observed and 0.0 when the subject was censored at ``time``.  The
:class:`~framework.core.specs.TaskSpec` (kind ``"prognosis"``) is available right after construction:
the survival table is read lazily on first access of :attr:`task_spec` (cheap) and its
``time_bins`` are quantile cut points of the Kaplan-Meier curve of the *training* split
(``pycox``'s ``LabTransDiscreteTime(num_time_bins, scheme="quantiles")``).  Images are loaded in
``setup``.

Two modules (this module re-exports them and the shared helpers):

* :class:`SurvivalDataModule`: your own images plus a survival table.
* :class:`SemiSyntheticSurvivalDataModule`: **SEMI-SYNTHETIC** data: real OrganAMNIST CT slices
  (official MedMNIST ``.npz``) whose survival times are *simulated* from the true organ label with
  an exponential proportional-hazards model and independent censoring.  It exists because no real
  imaging + survival data ships with this repository; results on it say nothing about patients.

Semi-synthetic model (times in months)::

    T     ~ Exponential(rate = baseline_hazard * exp(log_hazard[label]))
    C     = min(Exponential(rate = censoring_hazard), max_follow_up)
    time  = min(T, C);   event = 1 if T <= C else 0

Default ``log_hazard`` for the 11 OrganAMNIST organs (official label order), evenly spaced in
[-1.5, 1.5] (for another flag: evenly spaced in [-1.5, 1.5] over that flag's classes)::

    label  organ          log-hazard ratio
    0      bladder        -1.5
    1      left femur     -1.2
    2      right femur    -0.9
    3      heart          -0.6
    4      left kidney    -0.3
    5      right kidney    0.0
    6      liver           0.3
    7      left lung       0.6
    8      right lung      0.9
    9      pancreas        1.2
    10     spleen          1.5

Where the parts live:

* :mod:`data_modules.survival_base`: the dataset, time bins, C-index and the shared base class;
* :mod:`data_modules.survival_tables`: the survival CSV / ``.npz`` readers;
* :mod:`data_modules.survival_user`: :class:`SurvivalDataModule`;
* :mod:`data_modules.survival_semisynthetic`: :class:`SemiSyntheticSurvivalDataModule`.
"""
from __future__ import annotations

from data_modules.survival_base import SurvivalImageDataset, harrell_c_index, survival_time_bins
from data_modules.survival_semisynthetic import SemiSyntheticSurvivalDataModule
from data_modules.survival_user import SurvivalDataModule

__all__ = [
    "SurvivalDataModule",
    "SemiSyntheticSurvivalDataModule",
    "SurvivalImageDataset",
    "survival_time_bins",
    "harrell_c_index",
]
