"""A SHIFTED COPY of a domain: the same images under a synthetic acquisition shift.

For classification there is no real second source of the same task in ``../shared/data``, so a
cross-domain test set can be this: the domain's own images with a documented, deterministic shift
(gamma, contrast, brightness, Gaussian blur, Gaussian noise).  It is labelled as synthetic
everywhere (the task name must say so); a real pair (e.g. Kvasir-SEG -> CVC-ClinicDB) is always
better, and the stream's ``cross_domains`` field takes either.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch.utils.data import Dataset

from data_modules.base import DomainDataModule
from framework.core.specs import TaskSpec

__all__ = ["ShiftedCopyDataModule", "apply_shift"]


def apply_shift(image: torch.Tensor, gamma: float, contrast: float, brightness: float, blur_sigma: float, noise_std: float, generator: torch.Generator) -> torch.Tensor:
    """``clip(contrast * (x ** gamma - m) + m + brightness) (+ blur, + noise)`` on a float image in [0, 1]
    (``m`` = the image mean), returned as float32 in [0, 1].

    Written out rather than composed from MONAI's intensity transforms: the shift must be one fixed,
    documented function whose noise is seeded per sample (the same copy in every evaluation), not a
    random augmentation.
    """
    x = image.float().div(255.0) if image.dtype == torch.uint8 else image.float()
    x = x.clamp(0, 1) ** gamma
    mean = x.mean()
    x = (x - mean) * contrast + mean + brightness
    if blur_sigma > 0:
        from torchvision.transforms.functional import gaussian_blur

        k = 2 * int(round(3 * blur_sigma)) + 1
        flat = x.reshape(-1, *x.shape[-3:]) if x.ndim > 3 else x
        x = gaussian_blur(flat, kernel_size=[k, k], sigma=[blur_sigma, blur_sigma]).reshape(x.shape)
    if noise_std > 0:
        x = x + noise_std * torch.randn(x.shape, generator=generator)
    return x.clamp(0, 1)


class _ShiftedDataset(Dataset):
    def __init__(self, source: Dataset, shift: Dict[str, float], seed: int) -> None:
        self.source, self.shift, self.seed = source, shift, seed

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = dict(self.source[index])
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + index)  # same noise every epoch
        item["image"] = apply_shift(item["image"], generator=generator, **self.shift)
        return item


class ShiftedCopyDataModule(DomainDataModule):
    """SHIFTED COPY (synthetic shift, same images) of another domain, for cross-domain evaluation.

    Args:
        domain: the domain to copy (its splits and subsets are used as they are).
        task_name: the copy's name; must differ from the source's and should say it is shifted
            (e.g. ``bloodmnist_shifted``).
        gamma: intensity exponent (> 0; 1 = none).
        contrast: contrast factor around the image mean (> 0; 1 = none).
        brightness: added intensity (-1 .. 1).
        blur_sigma: Gaussian blur sigma in pixels (>= 0).
        noise_std: standard deviation of added Gaussian noise (>= 0), seeded per sample.
        seed: seed of the noise.

    Raises:
        ValueError: on an out-of-range shift parameter or a name equal to the source's.
    """

    def __init__(
        self,
        domain: DomainDataModule,
        task_name: str,
        gamma: float = 1.0,
        contrast: float = 1.0,
        brightness: float = 0.0,
        blur_sigma: float = 0.0,
        noise_std: float = 0.0,
        seed: int = 0,
    ) -> None:
        super().__init__(batch_size=domain.batch_size, eval_batch_size=domain.eval_batch_size, num_workers=domain.num_workers, drop_last=domain.drop_last)
        if not isinstance(domain, DomainDataModule):
            raise ValueError(f"ShiftedCopyDataModule: field 'domain' expected a DomainDataModule, found {type(domain).__name__}")
        if not isinstance(task_name, str) or not task_name or task_name == domain.task_spec.name:
            raise ValueError(
                f"ShiftedCopyDataModule: field 'task_name' expected a new name (not the source's {domain.task_spec.name!r}), found {task_name!r}"
            )
        shift = {"gamma": gamma, "contrast": contrast, "brightness": brightness, "blur_sigma": blur_sigma, "noise_std": noise_std}
        valid = {"gamma": (lambda v: v > 0, "> 0"), "contrast": (lambda v: v > 0, "> 0"), "brightness": (lambda v: -1 <= v <= 1, "in [-1, 1]"),
                 "blur_sigma": (lambda v: v >= 0, ">= 0"), "noise_std": (lambda v: v >= 0, ">= 0")}
        for name, value in shift.items():
            ok, expected = valid[name]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not ok(value):
                raise ValueError(f"ShiftedCopyDataModule: field '{name}' expected {expected}, found {value!r}")
        self.source = domain
        self.shift = {name: float(value) for name, value in shift.items()}
        self.seed = int(seed)
        self._spec = TaskSpec.from_dict({**domain.task_spec.to_dict(), "name": task_name})

    @property
    def task_spec(self) -> TaskSpec:
        return self._spec

    def prepare_data(self) -> None:
        self.source.prepare_data()

    def setup(self, stage: Optional[str] = None) -> None:
        self.source.setup(stage)

    def dataset(self, split: str) -> Dataset:
        return _ShiftedDataset(self.source.dataset(split), self.shift, self.seed)
