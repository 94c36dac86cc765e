"""``medcl-share SRC DST``: a copy of a MedCL checkpoint without its replay exemplars.

A checkpoint of a run with :class:`~framework.callbacks.ReplayCallback` holds the replay buffer:
raw training images (patient data) with their targets.  :func:`strip_exemplars` writes a copy
that keeps the model (weights, hyper-parameters, task specs, optimizer state, metric rows) and
replaces every replay buffer by a small marker::

    checkpoint["callbacks"]["ReplayCallback"] = {"stripped": True, "policy": ..., "world_size": ...,
                                                 "removed_samples": N, "tasks": {task: n}}

It also drops ``datamodule_hyper_parameters`` (data file paths can hold patient ids).  The copy
loads with ``load_from_checkpoint``, tests, predicts and grows a new run
(``--model.init_args.init_from``); resuming a replay run from it is refused, naming the reason.
See ``docs/patient_data.md``.

A checkpoint folder can also hold **orphan temporary files** (``.last.ckpt.<random>.tmp``) left by a
checkpoint write that was killed; they hold whole checkpoints, exemplars included.  ``medcl-share``
warns naming them (it only reads the input's folder, so it does not delete them unless asked with
``--remove-orphans``; see :func:`strip_exemplars`).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from torch import Tensor

from framework.core.checkpoints import atomic_save, find_orphan_temporaries, load_checkpoint, remove_orphan_temporaries

__all__ = ["strip_exemplars", "main", "STRIPPED_KEY", "orphan_warning"]

log = logging.getLogger(__name__)

#: the marker field of a stripped replay entry (``ReplayCallback.load_state_dict`` looks for it)
STRIPPED_KEY = "stripped"
_CHECKPOINT_KEY = "medcl"  # framework.paradigms.base.CHECKPOINT_KEY (not imported: keeps the script light)
_DROPPED_FIELDS = ("datamodule_hyper_parameters",)
PathLike = Union[str, Path]


def _is_replay_state(key: Any, state: Any) -> bool:
    """A callback entry that holds (or held) a replay buffer: ``ReplayCallback``'s, in any MedCL format."""
    if not isinstance(state, Mapping):
        return False
    if str(key).startswith("ReplayCallback"):
        return True
    return ("ranks" in state and "world_size" in state) or (isinstance(state.get("buffer"), Mapping) and "tasks" in state["buffer"])


def _buffer_counts(buffer: Any) -> Dict[str, int]:
    """``{task: stored samples}`` of one buffer state (``ReplayBuffer.state_dict``)."""
    counts: Dict[str, int] = {}
    tasks = buffer.get("tasks", {}) if isinstance(buffer, Mapping) else {}
    for task, data in dict(tasks).items():
        image = data.get("image") if isinstance(data, Mapping) else None
        counts[str(task)] = len(image) if isinstance(image, Tensor) and image.ndim else 0
    return counts


def _strip_replay(state: Mapping[str, Any]) -> Tuple[Dict[str, Any], int]:
    """The marker that replaces one replay entry, and the number of samples it removes."""
    if state.get(STRIPPED_KEY):
        return dict(state), 0
    buffers: List[Any] = list(state.get("ranks") or []) if "ranks" in state else [state.get("buffer")]
    tasks: Dict[str, int] = {}
    for buffer in buffers:
        for task, n in _buffer_counts(buffer).items():
            tasks[task] = tasks.get(task, 0) + n
    removed = sum(tasks.values())
    policy = state.get("policy")
    if policy is None and buffers and isinstance(buffers[0], Mapping):
        policy = buffers[0].get("policy")
    marker = {
        STRIPPED_KEY: True,
        "policy": policy,
        "world_size": state.get("world_size", 1),
        "removed_samples": removed,
        "tasks": tasks,
    }
    return marker, removed


def orphan_warning(orphans: List[Path]) -> str:
    """The warning ``medcl-share`` gives about orphan temporary checkpoint files it leaves in place."""
    megabytes = sum(p.stat().st_size for p in orphans if p.exists()) / 1e6
    folders = sorted({str(p.parent) for p in orphans})
    names = ", ".join(str(p) for p in orphans)
    return (
        f"medcl-share: warning: {', '.join(folders)} holds {len(orphans)} orphan temporary checkpoint file(s) "
        f"({megabytes:.1f} MB), left by a checkpoint write that was killed: {names}; they hold whole checkpoints, replay "
        f"exemplars (patient images) included: do not share that folder as it is; delete them, or run medcl-share again "
        f"with --remove-orphans"
    )


def strip_exemplars(src: PathLike, dst: PathLike, overwrite: bool = False, remove_orphans: bool = False) -> Dict[str, Any]:
    """Write a copy of the MedCL checkpoint ``src`` to ``dst`` without replay exemplars.

    Every replay buffer's stored samples (images and targets, of every rank) are removed and the
    callback entry is replaced by a marker ``{"stripped": True, "policy", "world_size",
    "removed_samples", "tasks"}``; ``datamodule_hyper_parameters`` is dropped.  Everything else
    (``state_dict``, hyper-parameters, task specs, optimizer and loop state, metric rows) is kept
    unchanged.  ``dst`` is written atomically (:func:`framework.core.checkpoints.atomic_save`); ``src``
    is only read.

    **Orphan temporaries.** The folders of ``src`` and ``dst`` are searched for temporary checkpoint
    files left by a killed write (``.<name>.ckpt.<random>.tmp``,
    :func:`framework.core.checkpoints.find_orphan_temporaries`): each holds a whole checkpoint, replay
    exemplars (patient images) included, so whoever shares such a folder shares them too.  They are
    named in a logged warning and in the result; they are deleted only with ``remove_orphans``,
    because ``medcl-share`` otherwise only reads the input's folder (a run of that folder may be
    writing; ``medcl fit`` removes them when a run starts).

    Args:
        src: the checkpoint to share.
        dst: where the copy goes.
        overwrite: replace an existing ``dst``.
        remove_orphans: delete the orphan temporary files found (default: only warn).

    Returns:
        ``{"src", "dst", "removed_samples", "tasks" ({task: samples removed}), "dropped" (top-level
        fields dropped), "bytes_before", "bytes_after", "orphans" (paths of the orphan temporary
        files found), "orphans_removed" (whether they were deleted)}``.

    Raises:
        FileNotFoundError: if ``src`` does not exist.
        ValueError: one line naming the file, what was expected and what was found: ``dst`` is
            ``src``, ``dst`` exists (without ``overwrite``) or is a folder, ``src`` is not a
            readable checkpoint or not a MedCL checkpoint (no ``"medcl"`` or ``"state_dict"`` entry).
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"medcl-share: input checkpoint {str(src)!r}: file not found (cwd {Path.cwd()})")
    if dst.exists() and dst.resolve() == src.resolve():
        raise ValueError(f"medcl-share: output {str(dst)!r} expected a new file, found the input checkpoint itself; name another output file")
    if dst.is_dir():
        raise ValueError(f"medcl-share: output {str(dst)!r} expected a file path, found a folder; name the file, e.g. {str(dst / 'shared.ckpt')!r}")
    if dst.exists() and not overwrite:
        raise ValueError(f"medcl-share: output {str(dst)!r} expected a new file, found an existing file; pass --overwrite to replace it")
    checkpoint = load_checkpoint(src, "medcl-share input checkpoint")
    missing = [key for key in (_CHECKPOINT_KEY, "state_dict") if key not in checkpoint]
    if missing:
        raise ValueError(
            f"medcl-share: input checkpoint {str(src)!r}: expected a MedCL checkpoint with 'medcl' and 'state_dict' entries "
            f"(written by medcl fit), found top-level keys {sorted(map(str, checkpoint))}"
        )
    removed = 0
    tasks: Dict[str, int] = {}
    callbacks = checkpoint.get("callbacks")
    if isinstance(callbacks, dict):
        for key, state in list(callbacks.items()):
            if _is_replay_state(key, state):
                marker, n = _strip_replay(state)
                callbacks[key] = marker
                removed += n
                if n:
                    for task, count in marker["tasks"].items():
                        tasks[task] = tasks.get(task, 0) + count
    dropped = [field for field in _DROPPED_FIELDS if field in checkpoint]
    for field in dropped:
        del checkpoint[field]
    folders = [src.parent] + ([dst.parent] if dst.parent.resolve() != src.parent.resolve() else [])
    orphans = [path for folder in folders for path in find_orphan_temporaries(folder)]
    if orphans and remove_orphans:
        for folder in folders:
            remove_orphan_temporaries(folder)  # logs how many files and MB it removed
    elif orphans:
        log.warning(orphan_warning(orphans))
    atomic_save(checkpoint, dst)
    return {
        "src": str(src),
        "dst": str(dst),
        "removed_samples": removed,
        "tasks": tasks,
        "dropped": dropped,
        "bytes_before": src.stat().st_size,
        "bytes_after": dst.stat().st_size,
        "orphans": [str(p) for p in orphans],
        "orphans_removed": bool(orphans) and remove_orphans,
    }


def summary_line(result: Mapping[str, Any]) -> str:
    """The one line ``medcl-share`` prints for a :func:`strip_exemplars` result."""
    per_task = ", ".join(f"{task}: {n}" for task, n in result["tasks"].items())
    dropped = f"; dropped {', '.join(result['dropped'])}" if result["dropped"] else ""
    return (
        f"medcl-share: wrote {result['dst']}: removed {result['removed_samples']} replay samples"
        f"{f' ({per_task})' if per_task else ''}{dropped}; "
        f"{result['bytes_before'] / 1e6:.2f} MB -> {result['bytes_after'] / 1e6:.2f} MB"
    )


def main(argv: Optional[List[str]] = None) -> None:
    """Entry point of ``medcl-share``; errors are printed as one line (``MEDCL_TRACEBACK=1`` for the traceback)."""
    from framework.cli import one_line_errors

    parser = argparse.ArgumentParser(
        prog="medcl-share",
        description="Copy a MedCL checkpoint without its replay exemplars (raw training images), to share a trained model.",
    )
    parser.add_argument("src", type=Path, help="the checkpoint to share (e.g. runs/quickstart/version_0/checkpoints/last.ckpt)")
    parser.add_argument("dst", type=Path, help="the new file to write (e.g. shared.ckpt)")
    parser.add_argument("--overwrite", action="store_true", help="replace dst if it exists")
    parser.add_argument(
        "--remove-orphans", action="store_true",
        help="delete orphan temporary checkpoint files (.<name>.ckpt.<random>.tmp, left by a killed write; they hold "
             "replay exemplars) found beside src or dst; without it they are only named in a warning",
    )
    args = parser.parse_args(argv)
    with one_line_errors("medcl-share"):
        result = strip_exemplars(args.src, args.dst, overwrite=args.overwrite, remove_orphans=args.remove_orphans)
        print(summary_line(result), flush=True)


if __name__ == "__main__":  # pragma: no cover
    main()
