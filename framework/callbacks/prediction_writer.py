"""``medcl predict`` output: one CSV per task and mask files, under the run folder."""
from __future__ import annotations

import csv
import gzip
import itertools
import logging
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.callbacks import BasePredictionWriter
from torch import Tensor

from framework.core.data_protocol import ROUTED_KEY

__all__ = ["PredictionWriter", "PREDICTIONS_DIR", "PREDICTIONS_CSV", "claim_output_folder", "merge_rank_parts"]

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
PREDICTIONS_CSV = "predictions.csv"
#: one rank's rows under DDP, merged into :data:`PREDICTIONS_CSV` by rank 0 at predict end
RANK_CSV = "predictions.rank{rank}.csv"


def claim_output_folder(target: Path, reuse_empty: bool = False) -> Path:
    """Create and return a folder of its own for one predict: ``target``, or ``target-1``,
    ``target-2`` ... when ``target`` already exists.

    Each candidate is claimed with ``os.mkdir``, which fails if the folder exists, so two
    predicts running at the same time never get the same folder and never overwrite each other.

    Args:
        target: the wanted folder (its parent is created).
        reuse_empty: also accept an existing, empty ``target`` (a folder the user made for this
            output); its files are still created exclusively, so nothing is ever overwritten.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    candidates = itertools.chain([target], (target.with_name(f"{target.name}-{i}") for i in itertools.count(1)))
    for candidate in candidates:
        try:
            os.mkdir(candidate)
        except FileExistsError:
            if reuse_empty and candidate == target and candidate.is_dir() and not any(candidate.iterdir()):
                return candidate
            continue
        if candidate != target:
            log.warning(
                "PredictionWriter: %s already holds the output of an earlier predict; writing to %s instead "
                "(predictions never overwrite)", target, candidate,
            )
        return candidate
    raise AssertionError("unreachable")  # pragma: no cover


def merge_rank_parts(folder: Path, union: bool = False) -> int:
    """Merge the DDP ranks' ``predictions.rank<k>.csv`` of one task folder into ``predictions.csv``
    (rows sorted by ``index``), remove the parts and return the number of rows.

    Args:
        folder: the task's folder.
        union: the parts may have different columns (``routed/``: each rank saw other tasks); the
            merged file has all of them, empty where a part had none.

    Raises:
        ValueError: if the parts' headers differ and ``union`` is off (naming both files).
        FileExistsError: if ``predictions.csv`` already exists (it is never overwritten).
    """
    parts = sorted(folder.glob(RANK_CSV.format(rank="*")))
    if not parts:
        return 0
    header: Optional[List[str]] = None
    rows: List[List[str]] = []
    for part in parts:
        with open(part, newline="") as fh:
            reader = csv.reader(fh)
            found = next(reader, None)
            if found is None:
                continue
            if header is None:
                header, first = list(found), part
            elif found != header and not union:
                raise ValueError(f"PredictionWriter: {part}: columns {found} differ from those of {first}: {header}")
            header += [c for c in found if c not in header]
            position = {c: i for i, c in enumerate(found)}
            rows.extend([row[position[c]] if c in position else "" for c in header] for row in reader)
    if header is not None:
        rows = [row + [""] * (len(header) - len(row)) for row in rows]
    rows.sort(key=lambda row: int(row[0]))
    if header is not None and "id" in header:
        column, seen = header.index("id"), {}
        for row in rows:
            if row[column] in seen:
                log.warning(
                    "PredictionWriter: %s: rows %s and %s have the same id %r; tell them apart by their index",
                    folder / PREDICTIONS_CSV, seen[row[column]], row[0], row[column],
                )
            seen.setdefault(row[column], row[0])
    with open(folder / PREDICTIONS_CSV, "x", newline="") as fh:
        writer = csv.writer(fh)
        if header is not None:
            writer.writerow(header)
        writer.writerows(rows)
    for part in parts:
        part.unlink()
    return len(rows)


class PredictionWriter(BasePredictionWriter):
    """Write every predicted batch to ``<run dir>/predictions/<task>/`` as it comes.

    * ``predictions.csv``: one row per sample: ``index`` (the sample's position in the data
      predicted), ``id`` (file id, when predicting a folder), the known target (``true_label``;
      ``time``/``event`` for prognosis) and the head's per-sample predictions (class
      probabilities ``p(<class>)``, ``risk``, survival curves ...);
    * ``masks/<id>.png`` for 2D masks (binary masks as 0/255, multi-label masks as label indices)
      and ``masks/<id>.nii.gz`` for volumes (in the axis order volumes are read in, RAS, see
      :mod:`data_modules.io`, with the input file's affine as read, so the mask overlays its image;
      only the geometry is written, no other header field).

    **Nothing is ever overwritten.** Every predict writes to a folder of its own: ``predictions/``,
    or ``predictions-1/``, ``predictions-2/`` ... when an earlier predict's output is there (claimed
    with ``os.mkdir``, so concurrent predicts never share one; the folder used is logged and
    printed).  Every file is created exclusively: two samples of one task with the same id are
    refused (``ValueError`` naming both), and a mask file that exists is an error naming it.

    **DDP**: every rank writes its own rows to ``predictions.rank<k>.csv`` and its own masks; at
    predict end rank 0 waits for all ranks (``trainer.strategy.barrier()``), merges the parts into
    ``predictions.csv`` sorted by ``index`` and removes them.

    **Without a task** (a model with a task router, no ``predict_task``): ``routed/predictions.csv``
    has one row per image: ``index``, ``id``, the routed ``source`` (or ``unknown``), the router's
    ``confidence`` and ``unknown_score``, the ``tasks`` predicted, and every such task's predictions
    as ``<task>:<column>``; masks go to ``<task>/masks/<id>.png`` as above.

    ``medcl predict`` adds this callback when the config has none.

    Args:
        output_dir: where to write; defaults to ``<trainer.log_dir>/predictions`` (or
            ``<trainer.default_root_dir>/predictions`` without a logger).  A given folder that
            exists and is empty is used as it is; one that holds files gets a numbered sibling.
    """

    def __init__(self, output_dir: Optional[str] = None) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self._files: Dict[str, Any] = {}
        self._writers: Dict[str, Any] = {}
        self._counts: Dict[str, int] = {}
        self._ids: Dict[str, Dict[str, int]] = {}
        self._rank, self._world = 0, 1
        self.root: Optional[Path] = None
        self._routed_rows: List[Dict[str, Any]] = []

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rank = int(getattr(trainer, "global_rank", 0) or 0)
        self._world = int(getattr(trainer, "world_size", 1) or 1)
        # trainer.log_dir broadcasts from rank 0 under DDP: every rank must ask, not only rank 0
        base = None if self.output_dir else Path(trainer.log_dir or trainer.default_root_dir)
        root: Optional[str] = None
        if self._rank == 0:
            if self.output_dir:
                root = str(claim_output_folder(Path(self.output_dir), reuse_empty=True))
            else:
                root = str(claim_output_folder(base / PREDICTIONS_DIR))
        if self._world > 1:
            root = trainer.strategy.broadcast(root, src=0)  # every rank writes into rank 0's folder
        self.root = Path(root)
        self._counts, self._ids = {}, {}
        self._files, self._writers = {}, {}
        self._routed_rows = []

    def write_on_batch_end(self, trainer, pl_module, prediction: Dict[str, Dict[str, Any]], batch_indices, batch, batch_idx, dataloader_idx) -> None:
        for task, values in prediction.items():
            if task == ROUTED_KEY:
                self._write_routed(pl_module, dict(values), batch_indices)
                continue
            head = pl_module.model_for(task).head(task)
            self._write_task(task, head, dict(values), batch_indices)

    def _write_task(self, task: str, head, values: Dict[str, Any], batch_indices: Optional[Sequence[int]] = None) -> None:
        folder = self.root / task
        ids = values.pop("id", None)
        target = values.pop("target", None)
        affines = values.pop("affine", None)  # NIfTI inputs: the grid their arrays were read on
        columns: Dict[str, List[Any]] = {}
        masks: Dict[str, Tensor] = {}
        named = dict(head.describe_target(target)) if target is not None else {}
        named.update(values)
        n = 0
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
        if batch_indices is not None and len(batch_indices) == n:
            index = [int(i) for i in batch_indices]  # positions in the dataset: unique across DDP ranks
        else:
            index = list(range(start, start + n))
        self._counts[task] = start + n
        names = [str(i) for i in ids] if ids is not None else [str(i) for i in index]
        self._check_names(task, names, index)
        self._append_rows(task, folder, index, ids, columns)
        for key, tensor in masks.items():
            out = folder / ("masks" if key == "mask" else key)
            out.mkdir(parents=True, exist_ok=True)
            for j, (name, mask) in enumerate(zip(names, tensor.numpy())):
                affine = None if affines is None else affines[j].detach().cpu().numpy()
                if head.spec.depth_axis == "axial" and mask.ndim == 3:  # served (Z, Y, X): back to the file's (X, Y, Z)
                    mask = mask.transpose(2, 1, 0)
                self._save_mask(out, name, mask, head.spec.num_classes, affine)

    def _write_routed(self, pl_module: pl.LightningModule, values: Dict[str, Any], batch_indices: Optional[Sequence[int]]) -> None:
        """One row per image (written at predict end, when every task's columns are known) and its masks."""
        (model,) = pl_module.all_models()
        ids = [str(i) for i in values["id"]]
        start = self._counts.get(ROUTED_KEY, 0)
        index = [int(i) for i in batch_indices] if batch_indices is not None and len(batch_indices) == len(ids) else list(range(start, start + len(ids)))
        self._counts[ROUTED_KEY] = start + len(ids)
        self._check_names(ROUTED_KEY, ids, index)
        for j, (i, name) in enumerate(zip(index, ids)):
            tasks = values["tasks"]
            row: Dict[str, Any] = {"index": i, "id": name, "source": values["source"][j], "confidence": float(values["confidence"][j]),
                                   "unknown_score": float(values["unknown_score"][j]), "tasks": "+".join(tasks)}
            for task, predictions in tasks.items():
                head = model.head(task)
                for key, tensor in predictions.items():
                    tensor = tensor.detach().cpu()
                    if tensor.ndim <= 2:
                        flat = tensor.reshape(tensor.shape[0], -1)
                        for column, value in zip(head.column_names(key, flat.shape[1]), flat[j]):
                            row[f"{task}:{column}"] = value.item()
                    else:
                        out = self.root / task / ("masks" if key == "mask" else key)
                        out.mkdir(parents=True, exist_ok=True)
                        mask = tensor[j].numpy()
                        if head.spec.depth_axis == "axial" and mask.ndim == 3:
                            mask = mask.transpose(2, 1, 0)
                        self._save_mask(out, name, mask, head.spec.num_classes)
                        row[f"{task}:{key}"] = str((out / name).relative_to(self.root)) + (".nii.gz" if mask.ndim == 3 else ".png")
            self._routed_rows.append(row)

    def _flush_routed(self) -> None:
        if not self._routed_rows:
            return
        header = list(dict.fromkeys(k for row in self._routed_rows for k in row))
        folder = self.root / "routed"
        folder.mkdir(parents=True, exist_ok=True)
        name = PREDICTIONS_CSV if self._world == 1 else RANK_CSV.format(rank=self._rank)
        with _open_new(folder / name, "x", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            for row in self._routed_rows:
                writer.writerow([_fmt(row[k]) if k in row else "" for k in header])
        self._counts["routed"] = self._counts.pop(ROUTED_KEY, len(self._routed_rows))
        self._routed_rows = []

    def _check_names(self, task: str, names: List[str], index: List[int]) -> None:
        """Every sample of a task gets its own output name (its id): refuse a repeated one."""
        seen = self._ids.setdefault(task, {})
        for name, i in zip(names, index):
            if name in seen:
                raise ValueError(
                    f"PredictionWriter: task '{task}': samples {seen[name]} and {i} have the same id {name!r}, so their "
                    f"outputs would overwrite each other; give every input file a distinct name (e.g. not both "
                    f"{name}.png and {name}.jpg)"
                )
            seen[name] = i

    def _append_rows(self, task: str, folder: Path, index: List[int], ids, columns: Dict[str, List[Any]]) -> None:
        header = ["index"] + (["id"] if ids is not None else []) + list(columns)
        if task not in self._writers:
            folder.mkdir(parents=True, exist_ok=True)
            name = PREDICTIONS_CSV if self._world == 1 else RANK_CSV.format(rank=self._rank)
            handle = _open_new(folder / name, "x", newline="")
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
    def _save_mask(folder: Path, name: str, mask: np.ndarray, num_classes: int, affine: Optional[np.ndarray] = None) -> None:
        mask = mask.astype(np.uint8)
        if mask.ndim == 3:
            import nibabel as nib

            # in the axis order volumes are read in (RAS, data_modules.io), with the input's affine as read
            # (its geometry only: no header field is copied), so the mask overlays its image in any viewer;
            # identity for inputs without one (.npz volumes)
            image = nib.Nifti1Image(np.ascontiguousarray(mask), np.eye(4) if affine is None else affine)
            with _open_new(folder / f"{name}.nii.gz", "xb", name) as fh, gzip.GzipFile(fileobj=fh, mode="wb", mtime=0) as gz:
                gz.write(image.to_bytes())
            return
        from PIL import Image

        with _open_new(folder / f"{name}.png", "xb", name) as fh:
            Image.fromarray(mask * 255 if num_classes == 2 else mask).save(fh, format="PNG")

    def _close(self) -> None:
        for handle in self._files.values():
            handle.close()
        self._files.clear()
        self._writers.clear()

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close()
        self._flush_routed()
        counts = dict(self._counts)
        if self._world > 1:
            trainer.strategy.barrier("PredictionWriter.merge")  # every rank has closed its part
            if self._rank == 0:
                tasks = sorted(p for p in self.root.iterdir() if p.is_dir())
                counts = {task.name: merge_rank_parts(task, union=task.name == "routed") for task in tasks}
                counts = {task: n for task, n in counts.items() if n}
        if self._rank == 0 and counts:
            summary = ", ".join(f"{task}: {n}" for task, n in counts.items())
            print(f"\nPredictions written to {self.root} ({summary} samples)", flush=True)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._close()
        if self._rank == 0 and self.root is not None and self.root.is_dir() and not any(self.root.iterdir()):
            self.root.rmdir()  # the folder this predict claimed and never wrote to


def _open_new(path: Path, mode: str, sample: Optional[str] = None, **kwargs):
    """``open(path, mode)`` with an exclusive mode ("x"/"xb"): a file that exists is an error naming it."""
    try:
        return open(path, mode, **kwargs)
    except FileExistsError:
        why = f"do two inputs have the id {sample!r}?" if sample is not None else "is another predict writing to this folder?"
        raise FileExistsError(f"PredictionWriter: {path} already exists; predictions never overwrite a file ({why})") from None


def _fmt(value: Any) -> Any:
    return f"{value:.6g}" if isinstance(value, float) else value
