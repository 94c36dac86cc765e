"""The frozen image features a task router reads: a copy of the image tower as the run started.

S-Prompts (Wang et al., NeurIPS 2022) identifies the domain of an image from the features of a
*frozen* pretrained backbone.  MedCL's backbone keeps training, so the router keeps its own frozen
copy of the image tower, taken when the run's starting weights are settled (pretrained ones, or the
random initialisation of a model trained from scratch), and stored in checkpoints with the router.
The text tower is not copied.  Memory: one more image tower (0.56 M parameters for
``medcl-vit-tiny``, 86 M for ``ViT-B-16``).

Two feature kinds (``features``):

* ``"layers"`` (default): the mean and the standard deviation over positions of the feature maps
  of up to :data:`MAX_LAYERS` evenly spaced blocks, each block's vector L2-normalised, concatenated
  (and, above :data:`MAX_DIM` dimensions, reduced by a fixed seeded random projection).  The pooled
  output of a deep network trained from scratch, and more so of a random one, collapses towards
  one direction (any two images have a cosine similarity near 1); the statistics of its earlier
  blocks still tell image sources apart;
* ``"pooled"``: the L2-normalised pooled image embedding (the backbone's ``encode_image``).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FrozenImageFeatures", "FEATURE_KINDS", "MAX_LAYERS", "MAX_DIM"]

#: what the router reads from the frozen tower
FEATURE_KINDS = ("layers", "pooled")
#: at most this many blocks' statistics (evenly spaced, the last included)
MAX_LAYERS = 4
#: above this many dimensions the layer statistics are randomly projected down to it
MAX_DIM = 1024

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
        features: one of :data:`FEATURE_KINDS`.

    Raises:
        ValueError: for an unknown ``features`` kind.
    """

    def __init__(self, backbone: nn.Module, features: str = "layers") -> None:
        super().__init__()
        if features not in FEATURE_KINDS:
            raise ValueError(f"task router: features expected one of {list(FEATURE_KINDS)}, found {features!r}")
        self.kind = features
        with _without_text(backbone):
            self.backbone = copy.deepcopy(backbone)
        self.backbone.requires_grad_(False)
        self.backbone.eval()
        self.indices: list = []
        self.projection: "Tensor | None" = None
        if features == "layers":
            with torch.no_grad(), self.backbone.input_size(None):
                size = tuple(self.backbone.image_size) if hasattr(self.backbone, "image_size") else (32, 32)
                maps = self.backbone.forward_intermediates(torch.zeros(1, 3, *size))
            n = len(maps)
            self.indices = sorted({round(i * (n - 1) / max(MAX_LAYERS - 1, 1)) for i in range(min(MAX_LAYERS, n))})
            dim = sum(2 * maps[i].shape[1] for i in self.indices)
            if dim > MAX_DIM:  # fixed (seeded) and regenerated, not stored: the same on every load
                generator = torch.Generator().manual_seed(0)
                self.projection = torch.randn(dim, MAX_DIM, generator=generator) / MAX_DIM ** 0.5

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
            if self.kind == "pooled":
                return F.normalize(self.backbone.encode_image(images, normalize=False).float(), dim=-1)
            if images.ndim == 5:  # a volume: every axial slice, statistics averaged over the slices
                b, c, d = images.shape[:3]
                slices = images.permute(0, 2, 1, 3, 4).reshape(b * d, c, *images.shape[-2:])
                return self._layer_statistics(slices).view(b, d, -1).mean(dim=1)
            return self._layer_statistics(images)

    def _layer_statistics(self, images: Tensor) -> Tensor:
        maps = self.backbone.forward_intermediates(images, indices=self.indices)
        parts = []
        for m in maps:
            flat = m.float().flatten(2)
            parts.append(F.normalize(torch.cat([flat.mean(dim=-1), flat.std(dim=-1)], dim=1), dim=-1))
        out = torch.cat(parts, dim=1)
        return out @ self.projection.to(out.device) if self.projection is not None else out
