"""Reading and writing checkpoint files safely.

* **Atomic writes** (:func:`atomic_save`, :class:`AtomicCheckpointIO`): a checkpoint is written to a
  temporary file in its own folder, flushed to disk and renamed over the target.  Lightning's
  default writer commits an fsspec transaction whose temporary file lives in ``$TMPDIR``; when that
  is another filesystem the "rename" becomes a copy, and a kill during it leaves a truncated
  checkpoint and an orphan temporary file.  A rename within one folder is atomic on POSIX and
  Windows, so a reader sees the old file or the new one, never half of one.
* **Disk full**: a write that fails because the disk (or quota) is full raises ``OSError``
  (``errno.ENOSPC``) "disk full while writing <path>; the previous checkpoint is kept", instead of
  torch's ``RuntimeError: [enforce fail at inline_container.cc:...] . unexpected pos ...``.
* **Orphan temporaries** (:func:`remove_orphan_temporaries`): a writer killed mid-write (SIGKILL,
  out of memory, a lost node) leaves ``.<name>.<random>.tmp`` beside the checkpoint.  Such a file
  holds a checkpoint's contents, i.e. the replay exemplars (patient images), so a run removes the
  ones in its checkpoint folder when it starts.
* **Safe loading** (:func:`load_checkpoint`): ``torch.load(weights_only=True)`` always, so a
  checkpoint or pretrained file can never run pickled code; errors name the file and say what is
  wrong (truncated, not a PyTorch file, pickled objects).  Trusted legacy files that need pickle
  (e.g. an ``nn.Module`` saved whole) load with the opt-in ``MEDCL_ALLOW_PICKLE=1``.
"""
from __future__ import annotations

import errno
import logging
import os
import pickle
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

__all__ = [
    "ALLOW_PICKLE_ENV", "allow_pickle", "atomic_save", "load_checkpoint", "AtomicCheckpointIO", "remove_orphan_temporaries",
    "find_orphan_temporaries", "ORPHAN_PATTERN",
]

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

#: the temporary files :func:`atomic_save` writes beside a ``*.ckpt`` (``.last.ckpt.k3j2x9.tmp``)
ORPHAN_PATTERN = ".*.ckpt.*.tmp"
#: free space under which a failed write is taken for a full disk, whatever the error says
_NEARLY_FULL_BYTES = 1 << 20

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
    leaves it there, and the next save of ``path`` removes it (:func:`remove_orphan_temporaries`
    removes those of every checkpoint of a folder).

    Raises:
        OSError: if the folder cannot be written (the temporary file is removed); on a full disk or
            quota, with ``errno.ENOSPC`` and the message "disk full while writing <path>; the
            previous checkpoint is kept" (or "no checkpoint was written" when there was none).
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
    except BaseException as err:
        full = isinstance(err, Exception) and _disk_full(err, path.parent)  # measured while the temporary file still fills the disk
        Path(tmp).unlink(missing_ok=True)
        if full:
            kept = "the previous checkpoint is kept" if path.exists() else "no checkpoint was written"
            error = OSError(
                f"disk full while writing {path}; {kept} ({_free_text(path.parent)}); free some space, or write "
                f"checkpoints elsewhere (trainer.default_root_dir), and resume from the last checkpoint"
            )
            error.errno = errno.ENOSPC
            raise error from err
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


def _disk_full(err: BaseException, folder: Path) -> bool:
    """Whether a failed write failed because its filesystem is full: ``ENOSPC``/``EDQUOT`` anywhere in
    the error's chain, torch's zip writer's "unexpected pos" (its message for a short write), or
    less than 1 MiB left on the filesystem now."""
    seen = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            return True
        if "unexpected pos" in str(err) or "No space left on device" in str(err):
            return True
        err = err.__cause__ or err.__context__
    try:
        return shutil.disk_usage(folder).free < _NEARLY_FULL_BYTES
    except OSError:  # pragma: no cover
        return False


def _free_text(folder: Path) -> str:
    try:
        usage = shutil.disk_usage(folder)
    except OSError:  # pragma: no cover
        return "free space unknown"
    return f"{usage.free / 1e6:.1f} MB free of {usage.total / 1e9:.1f} GB"


def find_orphan_temporaries(folder: PathLike, min_age_s: float = 0.0) -> List[Path]:
    """The temporary checkpoint files (``.<name>.ckpt.<random>.tmp``, :data:`ORPHAN_PATTERN`) in
    ``folder``, sorted, that were last modified at least ``min_age_s`` seconds ago; ``[]`` if
    ``folder`` does not exist.  They are left by writers killed mid-write and hold a checkpoint's
    contents (model weights and replay exemplars, i.e. patient images)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    now = time.time()
    found = []
    for path in sorted(folder.glob(ORPHAN_PATTERN)):
        try:
            if path.is_file() and now - path.stat().st_mtime >= min_age_s:
                found.append(path)
        except FileNotFoundError:  # removed meanwhile
            continue
    return found


def remove_orphan_temporaries(folder: PathLike, min_age_s: float = 0.0) -> List[Path]:
    """Remove the temporary checkpoint files that killed writers left in ``folder`` and return them.

    :func:`atomic_save` writes ``.<name>.<random>.tmp`` beside the checkpoint and renames it; a
    SIGKILL (or an out-of-memory kill, or a lost node) during the write leaves it behind, and it
    holds the checkpoint's replay exemplars (patient images).  A save of the same file name removes
    its own; this removes every ``.*.ckpt.*.tmp`` of the folder (not its subfolders), e.g. those of
    ``experience=0-epoch=0.ckpt`` that will never be written again.  Call it at the start of a run,
    when no writer of that folder is running; ``min_age_s`` spares files modified more recently
    (a writer of another process that is still running).

    Logs (warning) how many files and megabytes it removed, naming the folder.

    Args:
        folder: a checkpoint folder (e.g. ``<run>/checkpoints``); one that does not exist is fine.
        min_age_s: remove only files last modified at least this many seconds ago.

    Returns:
        the files removed (none: ``[]``).
    """
    removed: List[Path] = []
    size = 0
    for path in find_orphan_temporaries(folder, min_age_s):
        try:
            bytes_ = path.stat().st_size
            path.unlink()
        except FileNotFoundError:
            continue
        removed.append(path)
        size += bytes_
    if removed:
        log.warning(
            "removed %d orphan temporary checkpoint file(s) (%.1f MB) from %s, left by a checkpoint write that was killed: %s",
            len(removed), size / 1e6, folder, ", ".join(p.name for p in removed),
        )
    return removed


def load_checkpoint(path: PathLike, what: str = "checkpoint", map_location: Any = "cpu", mmap: bool = False) -> Dict[str, Any]:
    """Load a checkpoint (or pretrained weights file) without running pickled code.

    Args:
        path: the file.
        what: how to name it in errors (e.g. ``"--ckpt_path"``, ``"init_from"``).
        map_location: as for ``torch.load``.
        mmap: map the tensors instead of reading them (cheap when only the metadata is needed).

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
        checkpoint = torch.load(path, map_location=map_location, weights_only=not trusted, mmap=mmap or None)
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
