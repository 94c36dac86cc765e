"""Per-modality patch embeddings: the image tower's first convolution, one per input channel count.

peft's ``modules_to_save`` can keep per-adapter copies of a module, but only with the original's
shape; a modality with a different number of channels needs a convolution of another shape, so
this small router is written here.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor, nn

__all__ = ["RoutedPatchEmbedding", "find_patch_embedding", "install_router", "init_from_rgb"]


def find_patch_embedding(visual: nn.Module) -> Tuple[str, nn.Conv2d]:
    """The first 3-channel ``Conv2d`` of an image tower (ViT ``conv1``, ResNet stem ``conv1``).

    Raises:
        ValueError: if the tower has no such convolution.
    """
    for name, module in visual.named_modules():
        if isinstance(module, RoutedPatchEmbedding):
            return name, module.base
        if isinstance(module, nn.Conv2d) and module.in_channels == 3:
            return name, module
    raise ValueError(f"{type(visual).__name__}: no 3-channel Conv2d found to serve as the patch embedding")


def init_from_rgb(base: nn.Conv2d, in_channels: int, mode: str) -> nn.Conv2d:
    """A copy of ``base`` taking ``in_channels`` channels, initialised from its RGB filters.

    The grayscale filter is the sum of the RGB filters (a grayscale image is fed as three equal
    channels).  ``"first"``: channel 0 gets it, the others start at zero; ``"mean"``: every channel
    gets ``1/in_channels`` of it, so ``in_channels`` equal channels reproduce the grayscale response.
    """
    conv = nn.Conv2d(
        in_channels, base.out_channels, base.kernel_size, stride=base.stride, padding=base.padding,
        dilation=base.dilation, groups=base.groups, bias=base.bias is not None, padding_mode=base.padding_mode,
    ).to(base.weight.device, base.weight.dtype)
    with torch.no_grad():
        gray = base.weight.sum(dim=1, keepdim=True)
        if mode == "first":
            conv.weight.zero_()
            conv.weight[:, :1] = gray
        else:
            conv.weight.copy_(gray.expand_as(conv.weight) / in_channels)
        if base.bias is not None:
            conv.bias.copy_(base.bias)
    return conv


class RoutedPatchEmbedding(nn.Module):
    """Replaces the tower's first convolution: the original (``base``) serves 1/3-channel images,
    ``per_modality[m]`` the images of modality ``m`` while it is :attr:`active`.
    """

    def __init__(self, base: nn.Conv2d) -> None:
        super().__init__()
        self.base = base
        self.per_modality = nn.ModuleDict()
        self.active: Optional[str] = None  # set by ModalityAdapters.use

    @property
    def in_channels(self) -> int:
        """Channels the active route expects."""
        if self.active is not None and self.active in self.per_modality:
            return self.per_modality[self.active].in_channels
        return self.base.in_channels

    def forward(self, x: Tensor) -> Tensor:
        conv = self.per_modality[self.active] if self.active in self.per_modality else self.base
        return conv(x)


def install_router(visual: nn.Module) -> RoutedPatchEmbedding:
    """Put a :class:`RoutedPatchEmbedding` in place of the tower's first convolution (idempotent)."""
    name, conv = find_patch_embedding(visual)
    parent_name, _, attr = name.rpartition(".")
    parent = visual.get_submodule(parent_name) if parent_name else visual
    current = getattr(parent, attr)
    if isinstance(current, RoutedPatchEmbedding):
        return current
    router = RoutedPatchEmbedding(conv)
    setattr(parent, attr, router)
    return router
