"""Image–caption pairs for ``medcl pretrain`` (:class:`~framework.pretraining.ContrastivePretraining`).

Two sources:

* :class:`PromptPairsDataModule`: captions made from classification domains' class names and
  modality with caption templates ("a microscopy image of a neutrophil blood cell", "neutrophil,
  microscopy", ...); the domains' own class prompts are among them, so the model learns the prompts
  its zero-shot heads will use.
* :class:`CsvPairsDataModule`: a CSV of image paths and free texts (e.g. a hospital's image–report
  archive), with a ``split`` column.

Training batches are ``{"image": (B, 3, H, W), "text": [B captions]}``; evaluation loaders yield
held-out pairs and/or ``{"image", "target"}`` batches of the labelled tasks in ``zero_shot_tasks``
(scored zero-shot from their class prompts).
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from data_modules.base import SPLITS, DomainDataModule, trainer_limited
from data_modules.io import read_image
from framework.core.seeding import derived_seed, loader_sampling, run_seed
from framework.core.specs import TaskSpec

__all__ = ["DEFAULT_TEMPLATES", "PromptPairsDataModule", "CsvPairsDataModule", "caption"]

#: caption templates: ``{prompt}`` is the domain's own class prompt, ``{name}`` the class name, ``{modality}`` the modality
DEFAULT_TEMPLATES = (
    "{prompt}",
    "a {modality} image of {name}",
    "{name}, {modality}",
    "a {modality} image showing {name}",
    "{name}",
)
_FIELDS = ("prompt", "name", "modality")


def _check_templates(templates: Sequence[str], owner: str) -> List[str]:
    if isinstance(templates, str) or not templates:
        raise ValueError(f"{owner}: templates expected a non-empty list of strings, found {templates!r}")
    for template in templates:
        if not isinstance(template, str) or not template.strip():
            raise ValueError(f"{owner}: templates expected non-empty strings, found {template!r}")
        try:
            template.format(prompt="", name="", modality="")
        except (KeyError, IndexError, ValueError) as err:
            raise ValueError(f"{owner}: template {template!r} may use only the fields {{{'}, {'.join(_FIELDS)}}} ({err!r})") from None
        if "{name}" not in template and "{prompt}" not in template:
            raise ValueError(f"{owner}: template {template!r} names no class (expected {{name}} or {{prompt}})")
    return list(templates)


def caption(template: str, spec: TaskSpec, label: int) -> str:
    """The caption of class ``label`` of ``spec`` from ``template``."""
    return template.format(prompt=spec.prompts[label], name=spec.class_names[label].replace("_", " "), modality=spec.modality)


def _rgb(image: torch.Tensor) -> torch.Tensor:
    """``(3, H, W)``: grayscale repeated to three channels, as the backbone would do per batch."""
    return image.expand(3, *image.shape[1:]) if image.shape[0] == 1 else image


class _Captioned(Dataset):
    """A classification dataset's items as ``{"image", "text"}``; the template of each item is drawn
    from ``(seed, epoch, index)``, so every epoch pairs an image with another phrasing."""

    def __init__(self, dataset: Dataset, spec: TaskSpec, templates: Sequence[str], seed: int, epoch: int = 0) -> None:
        self.dataset, self.spec, self.templates, self.seed, self.epoch = dataset, spec, list(templates), seed, epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.dataset[index]
        label = int(torch.as_tensor(item["target"]).reshape(-1)[0])
        choice = np.random.default_rng([self.seed, self.epoch, index]).integers(len(self.templates))
        return {"image": _rgb(torch.as_tensor(item["image"])), "text": caption(self.templates[choice], self.spec, label)}


class _Labelled(Dataset):
    """A classification dataset's items with the image as three channels (for zero-shot scoring)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.dataset[index]
        return {"image": _rgb(torch.as_tensor(item["image"])), "target": torch.as_tensor(item["target"]).reshape(-1)[:1]}


class _PairsBase(pl.LightningDataModule):
    """Loaders shared by the pair sources: zero-shot tasks from classification domains."""

    def __init__(self, zero_shot_domains: Sequence[DomainDataModule], batch_size: int, eval_batch_size: Optional[int], num_workers: int) -> None:
        super().__init__()
        owner = type(self).__name__
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
            raise ValueError(f"{owner}: batch_size expected an integer >= 2 (a contrastive batch needs negatives), found {batch_size!r}")
        if eval_batch_size is not None and (isinstance(eval_batch_size, bool) or not isinstance(eval_batch_size, int) or eval_batch_size < 1):
            raise ValueError(f"{owner}: eval_batch_size expected a positive integer, found {eval_batch_size!r}")
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ValueError(f"{owner}: num_workers expected an integer >= 0, found {num_workers!r}")
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size or batch_size, num_workers
        self.zero_shot_domains = list(zero_shot_domains or [])
        for domain in self.zero_shot_domains:
            _check_classification(domain, owner, "zero_shot_domains")

    @property
    def zero_shot_tasks(self) -> List[Optional[TaskSpec]]:
        """One entry per evaluation loader: the task it scores zero-shot (``None`` for held-out pairs)."""
        return [d.task_spec for d in self.zero_shot_domains]

    def _setup_zero_shot(self, stage: Optional[str]) -> None:
        for domain in self.zero_shot_domains:
            domain.prepare_data()
            domain.setup(stage)

    def _loader(self, dataset: Dataset, train: bool, *keys: object) -> DataLoader:
        return DataLoader(
            dataset, batch_size=self.batch_size if train else self.eval_batch_size, num_workers=self.num_workers,
            **loader_sampling(dataset, train, *keys), drop_last=train and len(dataset) > self.batch_size,
        )

    def _zero_shot_loaders(self, split: str) -> List[DataLoader]:
        return [trainer_limited(self.trainer, self._loader(_Labelled(d.dataset(split)), False, "zero_shot", d.name, split), split)
                for d in self.zero_shot_domains]

    def val_dataloader(self):
        return self._zero_shot_loaders("val")

    def test_dataloader(self):
        return self._zero_shot_loaders("test")


def _check_classification(domain: Any, owner: str, field: str) -> None:
    if not isinstance(domain, DomainDataModule):
        raise ValueError(f"{owner}: {field} expected domain data modules (e.g. data_modules.MedMNISTDataModule), found {type(domain).__name__}")
    spec = domain.task_spec
    if spec.kind != "classification" or spec.spatial_dims != 2:
        raise ValueError(
            f"{owner}: {field} expected 2D classification domains (captions and zero-shot scores come from class names), "
            f"found {spec.name!r} ({spec.kind}, {spec.spatial_dims}D)"
        )


class PromptPairsDataModule(_PairsBase):
    """Image–caption pairs made from classification domains' labels (their training splits).

    Args:
        domains: classification data modules (e.g. ``MedMNISTDataModule``); every one must serve images
            of one size (the image tower runs at that size).
        templates: caption templates with ``{prompt}`` (the domain's class prompt), ``{name}`` (the class
            name) and ``{modality}``; one is drawn per image and epoch.
        zero_shot_domains: labelled domains scored zero-shot on their val/test splits (default: ``domains``).
        batch_size: training pairs per batch (the contrastive negatives).
        eval_batch_size: evaluation batch size (default: ``batch_size``).
        num_workers: DataLoader workers.
        seed: seed of the caption draw (combined with the epoch).

    Raises:
        ValueError: for a domain that is not 2D classification, domains of different image sizes, or bad templates.
    """

    def __init__(
        self,
        domains: Sequence[DomainDataModule],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        zero_shot_domains: Optional[Sequence[DomainDataModule]] = None,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        owner = type(self).__name__
        if not domains:
            raise ValueError(f"{owner}: domains expected at least one classification data module, found none")
        for domain in domains:
            _check_classification(domain, owner, "domains")
        super().__init__(list(domains) if zero_shot_domains is None else zero_shot_domains, batch_size, eval_batch_size, num_workers)
        self.domains = list(domains)
        self.templates = _check_templates(templates, owner)
        self.seed = int(seed)
        sizes = {d.name: tuple(d.task_spec.image_size) for d in self.domains}
        if len(set(sizes.values())) > 1:
            raise ValueError(
                f"{owner}: every domain must serve images of one size (one batch mixes them), found "
                f"{', '.join(f'{n} {s or None}' for n, s in sizes.items())}; set each domain's image_size to the same value"
            )

    @property
    def pretraining_domains(self) -> List[str]:
        """Names of the domains whose training images the model sees."""
        return [d.name for d in self.domains]

    def prepare_data(self) -> None:
        for domain in {id(d): d for d in [*self.domains, *self.zero_shot_domains]}.values():
            domain.prepare_data()

    def setup(self, stage: Optional[str] = None) -> None:
        for domain in {id(d): d for d in [*self.domains, *self.zero_shot_domains]}.values():
            domain.setup(stage)

    def train_dataloader(self):
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        seed = derived_seed(run_seed() or 0, "captions", self.seed)
        dataset = ConcatDataset([_Captioned(d.dataset("train"), d.task_spec, self.templates, seed, epoch) for d in self.domains])
        return self._loader(dataset, True, "pairs", "train", epoch)


class _CsvPairs(Dataset):
    def __init__(self, rows: List[Dict[str, Any]], size: Optional[int], source: Path, expected: Optional[tuple] = None) -> None:
        self.rows, self.size, self.source, self.expected = rows, size, source, expected
        self._resized = 0

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        row = self.rows[index]
        image = torch.from_numpy(read_image(row["path"]))
        if image.ndim != 3 or image.shape[0] not in (1, 3):
            raise ValueError(f"{self.source} row {row['line']}: image {row['path']} expected a 2D grayscale or RGB image, found shape {tuple(image.shape)}")
        if self.size is None and self.expected is not None and tuple(image.shape[-2:]) != self.expected:
            raise ValueError(
                f"{self.source} row {row['line']}: image {row['path']} expected the size of the first image {self.expected}, found "
                f"{tuple(image.shape[-2:])} (one batch stacks the images); set image_size to resize them all"
            )
        if self.size is not None and tuple(image.shape[-2:]) != (self.size, self.size):
            if self._resized == 0:
                warnings.warn(
                    f"CsvPairsDataModule: resizing images of {self.source} to image_size {self.size} (first: {row['path']}, "
                    f"{tuple(image.shape[-2:])}); an image of another aspect ratio is stretched", stacklevel=2
                )
            self._resized += 1
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", align_corners=False, antialias=True)[0]
        return {"image": _rgb(image), "text": row["text"]}


class CsvPairsDataModule(_PairsBase):
    """Image–text pairs listed in a CSV file (image path, text, split), e.g. images and their reports.

    Paths are relative to the CSV file's folder (or absolute).  Images are read when a batch needs
    them (PNG/JPEG/NIfTI 2D, scaled to ``[0, 1]`` by their bit depth).

    Args:
        file: the CSV file.
        image_column: column of image paths.
        text_column: column of captions/report texts.
        split_column: column with ``train``/``val``/``test`` per row; if the file has no such column every
            row is a training pair (said once) and validation scores only ``zero_shot_domains``.
        image_size: the side the images are resized to (warned once); ``None``: the images must all have
            one size, checked as they are read.
        zero_shot_domains: labelled classification domains scored zero-shot on their val/test splits.
        batch_size, eval_batch_size, num_workers: loader settings.

    Raises:
        FileNotFoundError: for a missing CSV or image file (naming the row).
        ValueError: for a missing column, an empty text or an unknown split value (naming the row).
    """

    def __init__(
        self,
        file: str,
        image_column: str = "image",
        text_column: str = "text",
        split_column: str = "split",
        image_size: Optional[int] = None,
        zero_shot_domains: Optional[Sequence[DomainDataModule]] = None,
        batch_size: int = 256,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
    ) -> None:
        super().__init__(zero_shot_domains or [], batch_size, eval_batch_size, num_workers)
        owner = type(self).__name__
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8):
            raise ValueError(f"{owner}: image_size expected None or an integer >= 8, found {image_size!r}")
        self.file, self.image_size = Path(file), image_size
        self.columns = {"image": image_column, "text": text_column, "split": split_column}
        self.rows = self._read()
        self.splits = {s: [r for r in self.rows if r["split"] == s] for s in SPLITS}
        if not self.splits["train"]:
            raise ValueError(f"{self.file}: expected at least one training pair (split 'train'), found none")

    @property
    def pretraining_domains(self) -> List[str]:
        return [self.file.name]

    def _read(self) -> List[Dict[str, Any]]:
        if not self.file.is_file():
            raise FileNotFoundError(f"CsvPairsDataModule: pairs file not found: {self.file}")
        with self.file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            header = reader.fieldnames or []
            for role in ("image", "text"):
                if self.columns[role] not in header:
                    raise ValueError(f"{self.file}: expected a column {self.columns[role]!r} ({role}), found columns {header}")
            has_split = self.columns["split"] in header
            if not has_split:
                warnings.warn(f"{self.file}: no {self.columns['split']!r} column: every row is a training pair", stacklevel=3)
            rows = []
            for line, record in enumerate(reader, start=2):
                text = (record.get(self.columns["text"]) or "").strip()
                if not text:
                    raise ValueError(f"{self.file} line {line}: column {self.columns['text']!r} expected a caption, found an empty value")
                raw = (record.get(self.columns["image"]) or "").strip()
                path = Path(raw) if Path(raw).is_absolute() else self.file.parent / raw
                if not raw or not path.is_file():
                    raise FileNotFoundError(f"{self.file} line {line}: image file not found: {raw!r} (paths are relative to {self.file.parent})")
                split = (record.get(self.columns["split"]) or "").strip() if has_split else "train"
                if split not in SPLITS:
                    raise ValueError(f"{self.file} line {line}: column {self.columns['split']!r} expected one of {list(SPLITS)}, found {split!r}")
                rows.append({"path": path, "text": text, "split": split, "line": line})
        if not rows:
            raise ValueError(f"{self.file}: expected at least one pair, found none")
        return rows

    @property
    def zero_shot_tasks(self) -> List[Optional[TaskSpec]]:
        tasks = super().zero_shot_tasks
        return tasks + [None] if self.splits["val"] else tasks

    def setup(self, stage: Optional[str] = None) -> None:
        self._setup_zero_shot(stage)
        # without image_size every image must have the first one's size (checked as each is read)
        expected = None if self.image_size is not None else tuple(read_image(self.rows[0]["path"]).shape[-2:])
        self.datasets = {s: _CsvPairs(rows, self.image_size, self.file, expected) for s, rows in self.splits.items()}

    def train_dataloader(self):
        epoch = self.trainer.current_epoch if self.trainer is not None else 0
        return self._loader(self.datasets["train"], True, "csv_pairs", "train", epoch)

    def _split_loaders(self, split: str) -> List[DataLoader]:
        loaders = self._zero_shot_loaders(split)
        if split == "val" and self.splits["val"]:
            loaders.append(trainer_limited(self.trainer, self._loader(self.datasets["val"], False, "csv_pairs", "val"), "val"))
        return loaders

    def val_dataloader(self):
        return self._split_loaders("val")

    def test_dataloader(self):
        return self._split_loaders("test")
