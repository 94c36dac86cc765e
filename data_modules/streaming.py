"""Collections beyond one machine's disk: LitData chunks, optimised once, streamed from a folder or object storage.

:func:`optimize_collection` runs a :class:`~data_modules.volumes.VolumeDataModule`'s deterministic
pipeline (read, intensity policy, spacing, axial layout, pad/crop) over every item once, with
Lightning's LitData (``litdata.optimize``), and writes binary chunks per split plus
``medcl_stream.json`` (the task spec and the settings that made the items).  The chunks can live on
a local disk, a shared file system or object storage (``s3://...``: LitData downloads chunks on
demand into ``cache_dir``, within ``max_cache_size``).

:class:`StreamingDataModule` serves them: the same items a ``VolumeDataModule`` with the same
settings serves, with the same training augmentation (random flips after the cache), in MedCL's
seeded order (items are read by index from ``litdata.StreamingDataset``, so exact resume and
subsets keep working).  LitData is used, not a home-made shard format: it handles chunking,
parallel optimisation, remote storage and local chunk caching.

    python -c "from data_modules.streaming import optimize_collection; from data_modules import VolumeDataModule; \\
               optimize_collection(VolumeDataModule(table='ct/manifest.csv', intensity='ct:abdomen', spacing=[1.5, 1.5, 3.0], \\
               spatial_size=[32, 128, 128], cache='none'), 'ct_chunks', num_workers=8)"

then, in a config: ``class_path: data_modules.StreamingDataModule``, ``init_args: {input_dir: ct_chunks}``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional, Union

from torch.utils.data import Dataset

from data_modules.base import SPLITS, DomainDataModule
from framework.core.specs import TaskSpec

__all__ = ["optimize_collection", "StreamingDataModule", "STREAM_INFO"]

#: the file beside the chunks that describes them
STREAM_INFO = "medcl_stream.json"
_FORMAT = 1


class _Encode:
    """``litdata.optimize``'s function: one manifest item through the deterministic pipeline, as plain tensors."""

    def __init__(self, transform: Any) -> None:
        self.transform = transform

    def __call__(self, item: Dict[str, Any]) -> Dict[str, Any]:
        out = self.transform(dict(item))
        return {"image": out["image"].contiguous(), "target": out["target"].contiguous(), "index": int(item["_index"])}


def optimize_collection(datamodule: Any, output_dir: Union[str, Path], num_workers: int = 1, chunk_bytes: str = "64MB") -> Path:
    """Write a :class:`~data_modules.volumes.VolumeDataModule`'s items as LitData chunks, one folder per split.

    Args:
        datamodule: a ``VolumeDataModule`` (its manifest, intensity, spacing, size and kind are used; its cache is not).
        output_dir: the folder to create (``<output_dir>/{train,val,test}`` and :data:`STREAM_INFO`).
        num_workers: LitData worker processes.
        chunk_bytes: the size of one chunk.

    Returns:
        ``output_dir``.

    Raises:
        FileExistsError: if ``output_dir`` already holds a collection (never overwritten).
        ValueError: if ``datamodule`` is not a ``VolumeDataModule``.
    """
    import litdata

    from data_modules.volumes import VolumeDataModule

    if not isinstance(datamodule, VolumeDataModule):
        raise ValueError(f"optimize_collection: expected a data_modules.VolumeDataModule, found {type(datamodule).__name__}")
    out = Path(output_dir)
    if (out / STREAM_INFO).exists() or any((out / split).exists() for split in SPLITS):
        raise FileExistsError(f"{out}: holds an optimised collection already; MedCL never overwrites one: choose another folder")
    manifest = datamodule._manifest()
    spec = datamodule.task_spec
    transform = datamodule._deterministic()
    import os
    import shutil
    import tempfile

    # LitData empties its working folders (by default /tmp/chunks and /tmp/data) at every start: it gets
    # private ones, so no folder of the user's is ever removed
    scratch = Path(tempfile.mkdtemp(prefix="medcl_litdata_"))
    saved = {key: os.environ.get(key) for key in ("DATA_OPTIMIZER_CACHE_FOLDER", "DATA_OPTIMIZER_DATA_CACHE_FOLDER")}
    os.environ["DATA_OPTIMIZER_CACHE_FOLDER"] = str(scratch / "chunks")
    os.environ["DATA_OPTIMIZER_DATA_CACHE_FOLDER"] = str(scratch / "data")
    try:
        for split in SPLITS:
            items = [dict(item, _index=i) for i, item in enumerate(manifest[split])]
            litdata.optimize(fn=_Encode(transform), inputs=items, output_dir=str(out / split), chunk_bytes=chunk_bytes,
                             num_workers=num_workers, verbose=False, reorder_files=False, keep_data_ordered=True)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        shutil.rmtree(scratch, ignore_errors=True)
    info = {
        "format": _FORMAT, "task_spec": spec.to_dict(), "settings_hash": datamodule.settings_hash(),
        "counts": {split: len(manifest[split]) for split in SPLITS},
        "ids": {split: [item["id"] for item in manifest[split]] for split in SPLITS},
    }
    (out / STREAM_INFO).write_text(json.dumps(info, indent=2))
    return out


class StreamingDataModule(DomainDataModule):
    """A collection written by :func:`optimize_collection`, read with ``litdata.StreamingDataset``.

    Args:
        input_dir: the optimised collection (a local folder, or a LitData-supported URL such as ``s3://bucket/ct_chunks``).
        task_name: rename the task (default: the name it was optimised with).
        augment: random flips of training items (as :class:`~data_modules.volumes.VolumeDataModule`).
        cache_dir: where LitData keeps downloaded chunks of a remote collection.
        max_cache_size: the most LitData keeps there (e.g. ``"50GB"``).
        batch_size, eval_batch_size, num_workers, drop_last: as :class:`DomainDataModule`.

    Raises:
        FileNotFoundError: if a local ``input_dir`` has no :data:`STREAM_INFO`.
        ValueError: on a collection of another format version or a count that differs from its chunks.
    """

    def __init__(
        self,
        input_dir: str,
        task_name: Optional[str] = None,
        augment: bool = True,
        cache_dir: Optional[str] = None,
        max_cache_size: str = "50GB",
        batch_size: int = 2,
        eval_batch_size: Optional[int] = None,
        num_workers: int = 0,
        drop_last: bool = False,
    ) -> None:
        super().__init__(batch_size=batch_size, eval_batch_size=eval_batch_size or batch_size, num_workers=num_workers, drop_last=drop_last)
        if not isinstance(augment, bool):
            raise ValueError(f"StreamingDataModule: augment expected true or false, found {augment!r}")
        self.input_dir = str(input_dir)
        self.augment = augment
        self.cache_dir = cache_dir
        self.max_cache_size = max_cache_size
        self.info = self._read_info()
        spec = TaskSpec.from_dict(self.info["task_spec"], source=f"{self.input_dir}/{STREAM_INFO}")
        if task_name is not None:
            from dataclasses import replace

            spec = replace(spec, name=task_name)
        self._spec = spec
        self._datasets: Dict[str, Dataset] = {}

    def _read_info(self) -> Dict[str, Any]:
        if "://" in self.input_dir:  # object storage: the small description file through fsspec (s3fs, gcsfs, ...)
            try:
                import fsspec
            except ImportError:
                raise ValueError(f"StreamingDataModule: reading {self.input_dir}/{STREAM_INFO} from object storage needs fsspec "
                                 f"and its backend (pip install s3fs), not installed") from None
            with fsspec.open(f"{self.input_dir.rstrip('/')}/{STREAM_INFO}", "r") as fh:
                info = json.load(fh)
        else:
            path = Path(self.input_dir) / STREAM_INFO
            if not path.is_file():
                raise FileNotFoundError(f"StreamingDataModule: {path} not found; write the collection with data_modules.streaming.optimize_collection")
            info = json.loads(path.read_text())
        if info.get("format") != _FORMAT:
            raise ValueError(f"{self.input_dir}/{STREAM_INFO}: field 'format' expected {_FORMAT}, found {info.get('format')!r}")
        return info

    @property
    def task_spec(self) -> TaskSpec:
        return self._spec

    def setup(self, stage: Optional[str] = None) -> None:
        if self._datasets:
            return
        from litdata import StreamingDataset

        from data_modules.volumes import _Augmented, _Flip

        for split in SPLITS:
            kwargs: Dict[str, Any] = {"max_cache_size": self.max_cache_size}
            if self.cache_dir is not None:
                kwargs["cache_dir"] = f"{self.cache_dir}/{split}"
            streaming = StreamingDataset(f"{self.input_dir.rstrip('/')}/{split}", shuffle=False, **kwargs)
            if len(streaming) != self.info["counts"][split]:
                raise ValueError(
                    f"{self.input_dir}/{split}: expected {self.info['counts'][split]} items ({STREAM_INFO}), found {len(streaming)} in the chunks"
                )
            flips = _Flip(self._spec.spatial_dims, self._spec.kind == "segmentation") if self.augment and split == "train" else None
            self._datasets[split] = _Augmented(streaming, flips)  # map-style: items read by index, in the collection's order

    def dataset(self, split: str) -> Dataset:
        if split not in SPLITS:
            raise ValueError(f"StreamingDataModule({self.name}): split expected one of {list(SPLITS)}, found {split!r}")
        if not self._datasets:
            raise RuntimeError(f"StreamingDataModule({self.name}): call setup() before asking for datasets")
        return self._datasets[split]

    def ids(self, split: str):
        """The item ids of ``split``, in order (from :data:`STREAM_INFO`)."""
        return list(self.info["ids"][split])

