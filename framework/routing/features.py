"""The frozen image features a task router reads: a copy of the image tower as the run started.

S-Prompts (Wang et al., NeurIPS 2022) identifies the domain of an image from the features of a
*frozen* pretrained backbone.  MedCL's backbone keeps training, so the router keeps its own frozen
copy of the image tower, taken when the run's starting weights are settled (pretrained ones, or the
random initialisation of a model trained from scratch), and stored in checkpoints with the router.
The text tower is not copied.  Memory: one more image tower (0.56 M parameters for
``medcl-vit-tiny``, 86 M for ``ViT-B-16``).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FrozenImageFeatures"]

#: open_clip modules that belong to the text side (CLIP and CustomTextCLIP): never copied
_TEXT_MODULES = ("transformer", "token_embedding", "ln_final", "text")


@contextlib.contextmanager
def _without_text(backbone: nn.Module) -> Iterator[None]:
    clip = getattr(backbone, "clip", None)
    removed = {}
    if clip is not None:
        for name in _TEXT_MODULES:
            if clip._modules.get(name) is not None:  # nn.Module keeps submodules in _modules: the documented container
                removed[name] = clip._modules[name]
                clip._modules[name] = None
    try:
        yield
    finally:
        for name, module in removed.items():
            clip._modules[name] = module


class FrozenImageFeatures(nn.Module):
    """L2-normalised pooled image embeddings from a frozen copy of a backbone's image tower.

    Images of any size are resized to the tower's own input size; 1- and 3-channel images are read
    as the backbone reads them; other channel counts (multi-channel modalities) are averaged to one
    grey channel, so the router reads every image the same way, whatever task it belongs to.
    Volumes ``(B, C, D, H, W)`` are encoded slice by slice and averaged, as the backbone does.

    Args:
        backbone: the model's backbone (:class:`~framework.backbone.CLIPBackbone` or a custom one).
    """

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        with _without_text(backbone):
            self.backbone = copy.deepcopy(backbone)
        self.backbone.requires_grad_(False)
        self.backbone.eval()

    def train(self, mode: bool = True) -> "FrozenImageFeatures":
        """Always in eval mode (dropout off, BatchNorm statistics frozen)."""
        return super().train(False)

    @torch.no_grad()
    def copy_from(self, backbone: nn.Module) -> None:
        """Take the image-tower weights of ``backbone`` (its starting weights, once they are settled)."""
        own = self.backbone.state_dict()
        source = {k: v for k, v in backbone.state_dict().items() if k in own}
        missing = [k for k in own if k not in source]
        if missing:
            raise ValueError(f"FrozenImageFeatures: the backbone has no weights for {missing[:5]} (was it grown with adapters already?)")
        self.backbone.load_state_dict(source, strict=True)

    @torch.no_grad()
    def forward(self, images: Tensor) -> Tensor:
        """``(B, embed_dim)`` features of ``(B, C, H, W)`` images or ``(B, C, D, H, W)`` volumes."""
        if images.ndim not in (4, 5):
            raise ValueError(f"task router: images expected shape (B, C, H, W) or (B, C, D, H, W), found {tuple(images.shape)}")
        if images.shape[1] not in (1, 3):  # a multi-channel modality: one grey view
            images = images.float().div(255.0) if images.dtype == torch.uint8 else images.float()
            images = images.mean(dim=1, keepdim=True)
        with self.backbone.input_size(None):
            features = self.backbone.encode_image(images, normalize=False)
        return F.normalize(features.float(), dim=-1)
