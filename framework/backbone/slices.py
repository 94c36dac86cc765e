"""Volumes through a 2D tower in bounded memory: slices in micro-batches, optionally checkpointed.

A CT volume of 300 slices used to go through the image tower as one batch of 300 images, so its
activations (and the full slice-major copy of the volume) had to fit in memory at once.  Here a
volume ``(B, C, D, H, W)`` is cut along depth into micro-batches of at most ``slice_batch_size``
slices (over the whole batch); only one micro-batch's copy and activations exist at a time at
inference.  In training, autograd keeps every micro-batch's activations for the backward pass
unless ``checkpoint`` is set: then each micro-batch is recomputed in the backward pass (PyTorch's
``torch.utils.checkpoint``, non-reentrant), trading compute for memory.

The settings live on the backbone (``slice_batch_size``, ``checkpoint_slices``) and are set from a
config with :class:`framework.callbacks.VolumeMemory`.  :func:`slice_average` pools the per-slice
embeddings of a volume (both CLIPBackbone and a 2D CustomBackbone use it).
"""
from __future__ import annotations

from typing import Callable, Tuple

import torch
from torch import Tensor

__all__ = ["DEFAULT_SLICE_BATCH_SIZE", "over_slices", "slice_average", "check_slice_settings"]

#: slices per micro-batch when nothing else is configured
DEFAULT_SLICE_BATCH_SIZE = 32


def check_slice_settings(slice_batch_size: int, checkpoint: bool, owner: str) -> None:
    """Raise ``ValueError`` naming ``owner`` for a ``slice_batch_size`` that is not a positive integer or a non-bool ``checkpoint``."""
    if isinstance(slice_batch_size, bool) or not isinstance(slice_batch_size, int) or slice_batch_size < 1:
        raise ValueError(f"{owner}: slice_batch_size expected a positive integer, found {slice_batch_size!r}")
    if not isinstance(checkpoint, bool):
        raise ValueError(f"{owner}: checkpoint_slices expected true or false, found {checkpoint!r}")


def over_slices(fn: Callable[[Tensor], Tensor], volumes: Tensor, slice_batch_size: int = DEFAULT_SLICE_BATCH_SIZE,
                checkpoint: bool = False) -> Tensor:
    """Apply a 2D function to every slice of ``volumes`` in micro-batches and restack along depth.

    Args:
        fn: ``(n, C, H, W) -> (n, *out)``, e.g. an image tower's embedding or a segmentation decoder.
        volumes: ``(B, C, D, H, W)``.
        slice_batch_size: at most this many slices (over the whole batch) per call of ``fn``; at
            least one depth step per call.
        checkpoint: recompute each micro-batch in the backward pass instead of keeping its
            activations (only when gradients are being recorded).

    Returns:
        ``(B, D, *out)``.
    """
    b, c, d = volumes.shape[:3]
    step = max(1, slice_batch_size // max(b, 1))
    use_checkpoint = checkpoint and torch.is_grad_enabled()
    outs = []
    for start in range(0, d, step):
        part = volumes[:, :, start:start + step]  # a view: only this micro-batch is copied slice-major
        k = part.shape[2]
        slices = part.transpose(1, 2).reshape(b * k, c, *part.shape[3:])
        if use_checkpoint:
            from torch.utils.checkpoint import checkpoint as recompute

            out = recompute(fn, slices, use_reentrant=False)
        else:
            out = fn(slices)
        outs.append(out.reshape(b, k, *out.shape[1:]))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def slice_average(encode_slices, volumes: Tensor, size: Tuple[int, int]) -> Tensor:
    """``(B, E)``: per-slice embeddings (``encode_slices``: ``(B, C, D, H, W) -> (B, E, D)``) averaged;
    slices larger in-plane than ``size`` are tiled with MONAI ``sliding_window_inference`` (one
    embedding per slice and window, stitched to ``(B, E, D, ~H/h, ~W/w)``), never shrunk."""
    d, h, w = volumes.shape[-3:]
    if h > size[0] or w > size[1]:
        from monai.inferers import sliding_window_inference

        maps = sliding_window_inference(
            volumes, roi_size=(d, *size), sw_batch_size=4, overlap=0.0, predictor=lambda window: encode_slices(window)[..., None, None]
        )
        return maps.flatten(2).mean(dim=2)
    return encode_slices(volumes).mean(dim=2)
