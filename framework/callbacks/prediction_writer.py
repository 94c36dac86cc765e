"""``medcl predict`` output: one CSV per task and mask files, under the run folder."""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor

__all__ = ["PredictionWriter", "PREDICTIONS_DIR", "PREDICTIONS_CSV"]

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
PREDICTIONS_CSV = "predictions.csv"


class PredictionWriter(BasePredictionWriter):
    """Write every predicted batch to ``<run dir>/predictions/<task>/`` as it comes.

    * ``predictions.csv``: one row per sample: ``index``, ``id`` (file id, when predicting a
      folder), the known target (``true_label``; ``time``/``event`` for prognosis) and the head's
      per-sample predictions (class probabilities ``p(<class>)``, ``risk``, survival curves ...);
    * ``masks/<id>.png`` for 2D masks (binary masks as 0/255, multi-label masks as label indices)
      and ``masks/<id>.nii.gz`` for volumes (in the axis order volumes are read in, see
      :mod:`data_modules.io`).

    ``medcl predict`` adds this callback when the config has none.

    Args:
        output_dir: where to write; defaults to ``<trainer.log_dir>/predictions``.
    """

    def __init__(self, output_dir: Optional[str] = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._files: Dict[str, Any] = {}
        self._writers: Dict[str, Any] = {}
        self._counts: Dict[str, int] = {}
        self.root: Optional[Path] = None

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.root = Path(self.output_dir or Path(trainer.log_dir or trainer.default_root_dir) / PREDICTIONS_DIR)
        self._counts = {}

    def write_on_batch_end(self, trainer, pl_module, prediction: Dict[str, Dict[str, Any]], batch_indices, batch, batch_idx, dataloader_idx) -> None:
        for task, values in prediction.items():
            head = pl_module.model_for(task).head(task)
            self._write_task(task, head, dict(values))

    def _write_task(self, task: str, head, values: Dict[str, Any]) -> None:
        folder = self.root / task
        ids = values.pop("id", None)
        target = values.pop("target", None)
        columns: Dict[str, List[Any]] = {}
        masks: Dict[str, Tensor] = {}
        named = dict(head.describe_target(target)) if target is not None else {}
        named.update(values)
        n = None
        for key, tensor in named.items():
            tensor = tensor.detach().cpu()
            n = tensor.shape[0]
            if tensor.ndim <= 2:
                flat = tensor.reshape(n, -1)
                for name, column in zip(head.column_names(key, flat.shape[1]), flat.t()):
                    columns[name] = column.tolist()
            else:
                masks[key] = tensor
        start = self._counts.get(task, 0)
        index = list(range(start, start + (n or 0)))
        self._counts[task] = start + (n or 0)
        names = [str(i) for i in ids] if ids is not None else [str(i) for i in index]
        self._append_rows(task, folder, index, ids, columns)
        for key, tensor in masks.items():
            out = folder / ("masks" if key == "mask" else key)
            out.mkdir(parents=True, exist_ok=True)
            for name, mask in zip(names, tensor.numpy()):
                self._save_mask(out, name, mask, head.spec.num_classes)

    def _append_rows(self, task: str, folder: Path, index: List[int], ids, columns: Dict[str, List[Any]]) -> None:
        header = ["index"] + (["id"] if ids is not None else []) + list(columns)
        if task not in self._writers:
            folder.mkdir(parents=True, exist_ok=True)
            handle = open(folder / PREDICTIONS_CSV, "w", newline="")
            self._files[task] = handle
            self._writers[task] = (csv.writer(handle), header)
            self._writers[task][0].writerow(header)
        writer, expected = self._writers[task]
        if header != expected:
            raise ValueError(f"PredictionWriter: task '{task}' changed its columns between batches: {expected} vs {header}")
        for row, i in enumerate(index):
            cells = [i] + ([str(ids[row])] if ids is not None else [])
            cells += [_fmt(columns[name][row]) for name in columns]
            writer.writerow(cells)

    @staticmethod
    def _save_mask(folder: Path, name: str, mask: np.ndarray, num_classes: int) -> None:
        mask = mask.astype(np.uint8)
        if mask.ndim == 3:
            import nibabel as nib

            # the same stored axis order volumes are read in (data_modules.io), identity affine
            nib.save(nib.Nifti1Image(np.ascontiguousarray(mask), np.eye(4)), str(folder / f"{name}.nii.gz"))
            return
        from PIL import Image

        Image.fromarray(mask * 255 if num_classes == 2 else mask).save(folder / f"{name}.png")

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._writers.clear()
        if trainer.is_global_zero and self._counts:
            summary = ", ".join(f"{task}: {n}" for task, n in self._counts.items())
            print(f"\nPredictions written to {self.root} ({summary} samples)", flush=True)


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
