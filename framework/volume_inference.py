"""Encode and segment one volume larger than memory, slab by slab.

The data side yields axial slabs ``(start, Tensor[C, k, H, W])`` (for example
:class:`data_modules.volume_slabs.NiftiSlabs`); each slab goes through the model as a volume of
``k`` slices (micro-batched by the backbone's ``slice_batch_size``, with sliding windows for slices
larger than the task's input), and only its result is kept: a running sum of slice embeddings, or
labels handed to a writer.  Peak memory is one slab's input, activations and logits.  Because the
2D tower and the segmentation head see slices one at a time, the result equals the whole-volume
pass (tested in tests/test_volume_slabs.py).
"""
from __future__ import annotations

from typing import Callable, Iterable, Tuple

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["encode_volume_slabs", "segment_volume_slabs"]


def _progress(slabs: Iterable, show: bool, what: str) -> Iterable:
    if not show:
        return slabs
    from tqdm.auto import tqdm

    return tqdm(slabs, total=len(slabs) if hasattr(slabs, "__len__") else None, desc=what, unit="slab")


@torch.no_grad()
def encode_volume_slabs(model: nn.Module, task: str, slabs: Iterable[Tuple[int, Tensor]], progress: bool = False) -> Tensor:
    """The volume embedding ``(embed_dim,)`` (slice embeddings averaged, L2-normalised), as ``encode_image`` of the whole volume.

    Args:
        model: a :class:`framework.model.MedCLModel` (its backbone runs at ``task``'s input size and adapters).
        task: the task whose input size and modality serve the slices.
        slabs: ``(start, (C, k, H, W))`` slabs in any order.
        progress: show a progress bar.
    """
    total, count = None, 0
    device = next(model.parameters()).device
    with model.route(model.specs[task]):
        for _, slab in _progress(slabs, progress, f"encoding ({task})"):
            k = slab.shape[1]
            mean = model.backbone.encode_image(slab[None].to(device), normalize=False)[0]  # the slab's slices averaged
            total = mean * k if total is None else total + mean * k
            count += k
    if total is None:
        raise ValueError("encode_volume_slabs: expected at least one slab, found none")
    return torch.nn.functional.normalize(total / count, dim=-1)


@torch.no_grad()
def segment_volume_slabs(
    model: nn.Module,
    task: str,
    slabs: Iterable[Tuple[int, Tensor]],
    write: Callable[[int, np.ndarray], None],
    progress: bool = False,
) -> int:
    """Segment every slab with ``task``'s head and hand its labels ``(k, H, W)`` uint8 to ``write(start, labels)``.

    Args:
        model: a :class:`framework.model.MedCLModel` with a segmentation head for ``task`` (a volume task).
        task: the segmentation task.
        slabs: ``(start, (C, k, H, W))`` slabs.
        write: called once per slab, e.g. :meth:`data_modules.volume_slabs.NiftiSlabWriter.write`.
        progress: show a progress bar.

    Returns:
        The number of slices segmented.

    Raises:
        ValueError: if ``task`` is not a segmentation task of a volume.
    """
    spec = model.specs[task]
    if spec.kind != "segmentation" or spec.spatial_dims != 3:
        raise ValueError(f"segment_volume_slabs: task {task!r} expected a volume segmentation task, found kind {spec.kind!r} "
                         f"with spatial_dims={spec.spatial_dims}")
    device = next(model.parameters()).device
    slices = 0
    for start, slab in _progress(slabs, progress, f"segmenting ({task})"):
        logits = model(slab[None].to(device), task)  # (1, K, k, H, W)
        write(start, logits[0].argmax(dim=0).to(torch.uint8).cpu().numpy())
        slices += slab.shape[1]
    return slices
