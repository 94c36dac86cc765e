"""Example custom image towers (the protocol of :mod:`framework.backbone.custom`), vision-only.

* :class:`MonaiViT3D` — a small native-3D ViT (MONAI ``ViT``, ``spatial_dims=3``): a volume is one
  sequence of 3D patches, instead of 2D slices encoded one by one and averaged;
* :class:`TimmTower2D` — any timm CNN as a 2D tower, with a feature pyramid for the segmentation decoder.

Use one as a paradigm's backbone::

    backbone:
      class_path: framework.backbone.towers.MonaiViT3D
      init_args: {image_size: [28, 28, 28], patch_size: 4, hidden_size: 128, num_layers: 4}
"""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor, nn

__all__ = ["MonaiViT3D", "TimmTower2D"]


def _positive(owner: str, **values: int) -> None:
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: {name} expected a positive integer, found {value!r}")


def _size(owner: str, size: Union[int, Sequence[int]], dims: int) -> Tuple[int, ...]:
    out = (size,) * dims if isinstance(size, int) and not isinstance(size, bool) else tuple(size)
    if len(out) != dims or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in out):
        raise ValueError(f"{owner}: image_size expected an integer or {dims} positive integers, found {size!r}")
    return out


def _load_state(module: nn.Module, path: str, owner: str) -> str:
    """Load a state dict file (``.safetensors`` or ``torch.save``) into ``module``, strictly."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"{owner}: weights file not found: {file}")
    if file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(file))
    else:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"{owner}: weights {str(file)!r} do not fit the tower: {str(err).splitlines()[0]}") from None
    return str(file)


class MonaiViT3D(nn.Module):
    """A native-3D ViT tower: MONAI's ``ViT`` over 3D patches, tokens mean-pooled (or the CLS token),
    then a linear projection to ``embed_dim``.  No text side.

    The default is ``medcl-vit-tiny``'s image tower in 3D (patch 4, width 128, 4 layers, 4 heads, MLP
    ratio 2): a 28^3 volume is one sequence of 343 patch tokens; 0.60 M parameters (the 2D tower has 0.56 M).

    Args:
        image_size: ``(D, H, W)`` or one int for all three; each divisible by ``patch_size``.
        patch_size: edge of the cubic patches.
        in_channels: input channels.
        hidden_size: transformer width.
        num_layers: transformer blocks.
        num_heads: attention heads (must divide ``hidden_size``).
        mlp_ratio: MLP width as a multiple of ``hidden_size``.
        embed_dim: width of the pooled embedding.
        pool: ``"mean"`` (of the patch tokens) or ``"cls"`` (a learned class token).
        dropout: dropout rate inside the transformer.
        weights: a state-dict file (``.safetensors`` or ``torch.save``) read by :meth:`load_pretrained`.

    Raises:
        ValueError: on invalid sizes (naming the argument).
    """

    spatial_dims = 3

    def __init__(
        self,
        image_size: Union[int, Sequence[int]] = 28,
        patch_size: int = 4,
        in_channels: int = 1,
        hidden_size: int = 128,
        num_layers: int = 4,
        num_heads: int = 4,
        mlp_ratio: int = 2,
        embed_dim: int = 128,
        pool: str = "mean",
        dropout: float = 0.0,
        weights: Optional[str] = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _positive(owner, patch_size=patch_size, in_channels=in_channels, hidden_size=hidden_size, num_layers=num_layers,
                  num_heads=num_heads, mlp_ratio=mlp_ratio, embed_dim=embed_dim)
        self.image_size = _size(owner, image_size, 3)
        if any(s % patch_size for s in self.image_size):
            raise ValueError(f"{owner}: image_size {list(self.image_size)} expected multiples of patch_size={patch_size}")
        if hidden_size % num_heads:
            raise ValueError(f"{owner}: hidden_size={hidden_size} expected a multiple of num_heads={num_heads}")
        if pool not in ("mean", "cls"):
            raise ValueError(f"{owner}: pool expected 'mean' or 'cls', found {pool!r}")
        from monai.networks.nets import ViT

        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.pool = pool
        self.weights = weights
        self.vit = ViT(
            in_channels=in_channels, img_size=self.image_size, patch_size=patch_size, hidden_size=hidden_size,
            mlp_dim=hidden_size * mlp_ratio, num_layers=num_layers, num_heads=num_heads, classification=False,
            dropout_rate=dropout, spatial_dims=3,
        )
        if dropout == 0:  # PyTorch's fused attention (same result; MONAI would pass dropout_p to it in eval mode too)
            for block in self.vit.blocks:
                block.attn.use_flash_attention = True
        if pool == "cls":  # MONAI adds its class token only with classification=True
            self.cls_token = nn.Parameter(torch.zeros(1, 1, hidden_size))
        self.proj = nn.Linear(hidden_size, embed_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        tokens = self.vit.patch_embedding(x)
        if self.pool == "cls":
            tokens = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        for block in self.vit.blocks:
            tokens = block(tokens)
        tokens = self.vit.norm(tokens)
        return self.proj(tokens[:, 0] if self.pool == "cls" else tokens.mean(dim=1))

    def load_pretrained(self) -> Optional[str]:
        """Read ``weights`` (if set) into the tower; returns the file, or ``None``."""
        return None if self.weights is None else _load_state(self, self.weights, type(self).__name__)


class TimmTower2D(nn.Module):
    """A timm CNN as a 2D tower: its feature pyramid (``features_only``) feeds the segmentation
    decoder, its deepest map, average-pooled and projected, is the embedding.  No text side.

    Args:
        model_name: a timm architecture with ``features_only`` support (``resnet18``, ``test_resnet``, ...).
        image_size: ``(H, W)`` or one int.
        in_channels: input channels.
        embed_dim: width of the pooled embedding.
        weights: a state-dict file of this tower read by :meth:`load_pretrained` (nothing is downloaded).

    Raises:
        ValueError: for an unknown timm model or invalid sizes.
    """

    spatial_dims = 2

    def __init__(
        self,
        model_name: str = "resnet18",
        image_size: Union[int, Sequence[int]] = 28,
        in_channels: int = 3,
        embed_dim: int = 128,
        weights: Optional[str] = None,
    ) -> None:
        super().__init__()
        owner = type(self).__name__
        _positive(owner, in_channels=in_channels, embed_dim=embed_dim)
        import timm

        if not timm.is_model(model_name):
            raise ValueError(f"{owner}: model_name {model_name!r} is not a timm architecture (timm.list_models() lists them)")
        self.image_size = _size(owner, image_size, 2)
        self.in_channels = in_channels
        self.embed_dim = embed_dim
        self.weights = weights
        self.encoder = timm.create_model(model_name, pretrained=False, features_only=True, in_chans=in_channels)
        self.proj = nn.Linear(self.encoder.feature_info.channels()[-1], embed_dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(self.encoder(x)[-1].mean(dim=(2, 3)))

    def forward_intermediates(self, x: Tensor, indices: Union[int, Sequence[int], None] = None) -> List[Tensor]:
        """Pyramid maps ``(B, C_i, H_i, W_i)``, shallow to deep: an int takes the last *n*, a list those, ``None`` all."""
        maps = self.encoder(x)
        if indices is None:
            return maps
        if isinstance(indices, int):
            return maps[-indices:]
        return [maps[i] for i in indices]

    def load_pretrained(self) -> Optional[str]:
        """Read ``weights`` (if set) into the tower; returns the file, or ``None``."""
        return None if self.weights is None else _load_state(self, self.weights, type(self).__name__)
