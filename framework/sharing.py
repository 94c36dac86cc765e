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
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

from torch import Tensor

from framework.checkpoints import atomic_save, load_checkpoint

__all__ = ["strip_exemplars", "main", "STRIPPED_KEY"]

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


def strip_exemplars(src: PathLike, dst: PathLike, overwrite: bool = False) -> Dict[str, Any]:
    """Write a copy of the MedCL checkpoint ``src`` to ``dst`` without replay exemplars.

    Every replay buffer's stored samples (images and targets, of every rank) are removed and the
    callback entry is replaced by a marker ``{"stripped": True, "policy", "world_size",
    "removed_samples", "tasks"}``; ``datamodule_hyper_parameters`` is dropped.  Everything else
    (``state_dict``, hyper-parameters, task specs, optimizer and loop state, metric rows) is kept
    unchanged.  ``dst`` is written atomically (:func:`framework.checkpoints.atomic_save`); ``src``
    is only read.

    Args:
        src: the checkpoint to share.
        dst: where the copy goes.
        overwrite: replace an existing ``dst``.

    Returns:
        ``{"src", "dst", "removed_samples", "tasks" ({task: samples removed}), "dropped" (top-level
        fields dropped), "bytes_before", "bytes_after"}``.

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
    atomic_save(checkpoint, dst)
    return {
        "src": str(src),
        "dst": str(dst),
        "removed_samples": removed,
        "tasks": tasks,
        "dropped": dropped,
        "bytes_before": src.stat().st_size,
        "bytes_after": dst.stat().st_size,
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
    args = parser.parse_args(argv)
    with one_line_errors("medcl-share"):
        print(summary_line(strip_exemplars(args.src, args.dst, overwrite=args.overwrite)), flush=True)


if __name__ == "__main__":  # pragma: no cover
    main()
