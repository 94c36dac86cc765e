"""Reading and writing checkpoint files safely.

* **Atomic writes** (:func:`atomic_save`, :class:`AtomicCheckpointIO`): a checkpoint is written to a
  temporary file in its own folder, flushed to disk and renamed over the target.  Lightning's
  default writer commits an fsspec transaction whose temporary file lives in ``$TMPDIR``; when that
  is another filesystem the "rename" becomes a copy, and a kill during it leaves a truncated
  checkpoint and an orphan temporary file.  A rename within one folder is atomic on POSIX and
  Windows, so a reader sees the old file or the new one, never half of one.
* **Safe loading** (:func:`load_checkpoint`): ``torch.load(weights_only=True)`` always, so a
  checkpoint or pretrained file can never run pickled code; errors name the file and say what is
  wrong (truncated, not a PyTorch file, pickled objects).  Trusted legacy files that need pickle
  (e.g. an ``nn.Module`` saved whole) load with the opt-in ``MEDCL_ALLOW_PICKLE=1``.
"""
from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = ["ALLOW_PICKLE_ENV", "allow_pickle", "atomic_save", "load_checkpoint", "AtomicCheckpointIO"]

PathLike = Union[str, Path]

#: environment variable that lets trusted legacy files run pickled code when loaded
ALLOW_PICKLE_ENV = "MEDCL_ALLOW_PICKLE"
_ZIP_MAGIC = b"PK\x03\x04"


def allow_pickle() -> bool:
    """Whether the user opted in to loading pickled objects (``MEDCL_ALLOW_PICKLE=1``)."""
    return os.environ.get(ALLOW_PICKLE_ENV, "").strip().lower() in ("1", "true", "yes")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_save(obj: Any, path: PathLike) -> None:
    """``torch.save(obj, path)`` that never leaves a partial ``path``.

    The temporary file ``.<name>.<random>.tmp`` sits beside ``path``; a writer killed mid-write
    leaves it there, and the next save of ``path`` removes it.

    Raises:
        OSError: if the folder cannot be written (the temporary file is removed).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{path.name}.*.tmp"):  # left by a writer that was killed (one writer per path)
        stale.unlink(missing_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private (0600); give it a normal file's mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # pragma: no cover - e.g. Windows cannot open folders
        return
    try:
        os.fsync(dir_fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(dir_fd)


def load_checkpoint(path: PathLike, what: str = "checkpoint", map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint (or pretrained weights file) without running pickled code.

    Args:
        path: the file.
        what: how to name it in errors (e.g. ``"--ckpt_path"``, ``"init_from"``).
        map_location: as for ``torch.load``.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        ValueError: one line naming ``what`` and ``path``: not a PyTorch file, truncated or corrupt,
            pickled objects (with the ``MEDCL_ALLOW_PICKLE=1`` opt-in), or not a dictionary.
    """
    path = Path(path)
    where = f"{what} {str(path)!r}"
    if not path.is_file():
        raise FileNotFoundError(f"{where}: file not found (cwd {Path.cwd()})")
    with open(path, "rb") as fh:
        head = fh.read(4)
    trusted = allow_pickle()
    if head != _ZIP_MAGIC and not trusted:
        found = "an empty file" if not head else f"a file starting with {head!r}"
        raise ValueError(
            f"{where}: expected a PyTorch checkpoint (a zip archive written by torch.save), found {found}; "
            f"a pre-1.6 legacy file loads only with {ALLOW_PICKLE_ENV}=1, and only if you trust it"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=not trusted)
    except pickle.UnpicklingError as err:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))  # torch colours its message
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        first = next((line for line in lines if "Unsupported global" in line), lines[0] if lines else type(err).__name__).split(". ")[0]
        raise ValueError(
            f"{where}: holds pickled Python objects that loading would have to execute ({first}); MedCL loads only tensors "
            f"and plain containers. If you trust this file, set {ALLOW_PICKLE_ENV}=1 to load it anyway"
        ) from None
    except Exception as err:  # torch raises RuntimeError (and others) for truncated or damaged archives
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{where}: truncated or corrupt checkpoint (torch.load: {first}); an interrupted copy or write? "
            f"Use another checkpoint of the run, e.g. the previous epoch's"
        ) from None
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{where}: expected a checkpoint dictionary, found {type(checkpoint).__name__}")
    return checkpoint


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint writer and reader, with atomic local writes and safe loading.

    ``medcl`` installs it in every Trainer it builds (unless the config names another
    ``checkpoint_io`` plugin).  Remote URLs (``s3://...``) keep Lightning's fsspec path.
    """

    def save_checkpoint(self, checkpoint: Dict[str, Any], path: PathLike, storage_options: Optional[Any] = None) -> None:
        if "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__}.save_checkpoint: storage_options are not supported, found {storage_options!r}")
        atomic_save(checkpoint, path)

    def load_checkpoint(
        self, path: PathLike, map_location: Optional[Callable] = lambda storage, loc: storage, weights_only: Optional[bool] = None
    ) -> Dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True if weights_only is None else weights_only)
        return load_checkpoint(path, "--ckpt_path", map_location=map_location)
