"""Each task at its own input size: image towers that run at any resolution.

A task declares the in-plane size it is trained at (:attr:`TaskSpec.image_size
<framework.core.specs.TaskSpec.image_size>`, by default the size its data comes in); the backbone runs its
image tower at that size (:meth:`CLIPBackbone.input_size <framework.backbone.clip.CLIPBackbone.input_size>`).

* Convolutional towers (timm ResNets, ...) take any size as they are.
* ViT towers keep their learned position embeddings at the native grid and resample them to the
  task's grid on the fly, with timm's ``resample_abs_pos_embed`` (bicubic, the prefix token kept):
  open_clip's own ``VisionTransformer`` through :class:`AnySizeVisionTransformer`, timm ViTs (e.g.
  BiomedCLIP's) through timm's own ``dynamic_img_size`` mode.
* A ViT runs at the task's size rounded *up* to a multiple of its patch size (28 px on a 16-px
  patch tower runs at 32 px): images are never shrunk, and no pixel row is dropped by the patch grid.
* Towers with a fixed-size attention pool (open_clip's ``ModifiedResNet``) are refused at any size
  but their own, naming the sizes.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
from open_clip.transformer import VisionTransformer, _expand_token
from torch import Tensor, nn

__all__ = ["AnySizeVisionTransformer", "enable_any_input_size", "check_input_size", "patch_multiple"]


class AnySizeVisionTransformer(VisionTransformer):
    """open_clip's ``VisionTransformer`` whose position embedding follows the input's patch grid.

    open_clip (3.3) adds its position embedding at the grid of the configured image size only; this
    subclass differs in ``_embeds`` alone (the same steps, with the embedding resampled when the grid
    differs), so the weights, their names and every other method are open_clip's.
    """

    def _embeds(self, x: Tensor) -> Tensor:
        from timm.layers import resample_abs_pos_embed

        x = self.conv1(x)  # [*, width, grid_h, grid_w]
        grid = tuple(x.shape[-2:])
        x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([_expand_token(self.class_embedding, x.shape[0]).to(x.dtype), x], dim=1)
        pos = self.positional_embedding
        if grid != tuple(self.grid_size):
            pos = resample_abs_pos_embed(pos.unsqueeze(0), new_size=list(grid), old_size=list(self.grid_size), num_prefix_tokens=1).squeeze(0)
        x = x + pos.to(x.dtype)
        x = self.patch_dropout(x)
        return self.ln_pre(x)


def _timm_vit(visual: nn.Module):
    trunk = getattr(visual, "trunk", None)
    try:
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError:  # pragma: no cover - timm is a dependency
        return None
    return trunk if isinstance(trunk, TimmViT) else None


def enable_any_input_size(visual: nn.Module) -> None:
    """Let ``visual`` (an open_clip image tower) run at any input size (in place; weights unchanged)."""
    if type(visual) is VisionTransformer:
        visual.__class__ = AnySizeVisionTransformer
        return
    trunk = _timm_vit(visual)
    if trunk is not None and not getattr(trunk, "dynamic_img_size", False):
        from timm.layers import Format

        # what timm sets up when a ViT is created with dynamic_img_size=True
        trunk.dynamic_img_size = True
        embed = trunk.patch_embed
        embed.strict_img_size = False
        embed.dynamic_img_pad = getattr(embed, "dynamic_img_pad", False)
        if getattr(embed, "flatten", False):
            embed.flatten = False
            embed.output_fmt = Format.NHWC


def check_input_size(visual: nn.Module, native: Tuple[int, int], size: Tuple[int, int], where: str) -> None:
    """Refuse a size the tower cannot run at.

    Raises:
        ValueError: for a tower with a fixed-size attention pool at another size, or a size below one patch.
    """
    if tuple(size) == tuple(native):
        return
    from open_clip.modified_resnet import ModifiedResNet

    if isinstance(visual, ModifiedResNet):
        raise ValueError(
            f"{where}: image_size {list(size)} differs from the tower's {list(native)}, and open_clip's ModifiedResNet "
            f"(attention pool with a fixed-size position embedding) runs at its own size only; set the task's image_size to {list(native)}"
        )
    patch = _patch(visual)
    if patch is not None:
        ph, pw = patch
        if size[0] < ph or size[1] < pw:
            raise ValueError(f"{where}: image_size {list(size)} is smaller than one {ph}x{pw} patch of the image tower")


def _patch(visual: nn.Module) -> Optional[Tuple[int, int]]:
    patch = getattr(visual, "patch_size", None)
    trunk = _timm_vit(visual)
    if patch is None and trunk is not None:
        patch = trunk.patch_embed.patch_size
    if patch is None:
        return None
    return tuple(patch) if isinstance(patch, (tuple, list)) else (patch, patch)


def patch_multiple(visual: nn.Module, size: Tuple[int, int]) -> Tuple[int, int]:
    """``size`` rounded up to a multiple of the tower's patch size (unchanged for convolutional towers)."""
    patch = _patch(visual)
    if patch is None:
        return tuple(size)
    return tuple(-(-s // p) * p for s, p in zip(size, patch))
