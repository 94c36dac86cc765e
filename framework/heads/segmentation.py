"""Segmentation head: a UNETR-style decoder over several depths of the image tower."""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MetricCollection
from torchmetrics.segmentation import DiceScore, MeanIoU

from framework.backbone.slices import DEFAULT_SLICE_BATCH_SIZE, over_slices
from framework.heads.base import TaskHead, soft_kl_divergence
from framework.heads.registry import register_head
from framework.core.specs import TaskSpec

__all__ = ["SegmentationHead", "plan_decoder"]


def plan_decoder(feature_sizes: Sequence[int], input_size: int) -> Tuple[int, List[int]]:
    """Assign backbone features to decoder stages.

    The decoder starts at the deepest feature's resolution ``r0`` and doubles it ``n`` times until
    it reaches the input size (stage ``n`` takes the raw image as its skip, as in UNETR).  The
    remaining features, deepest first, go to stages ``1 .. n-1``: each to the stage whose
    resolution is nearest its own, never before the previous feature's stage; features that find
    no free stage are fused (summed) into stage ``n-1``.  For a ViT (all features at one
    resolution) this is UNETR's assignment (deeper blocks feed coarser stages); for a CNN pyramid
    every feature lands at its own resolution.

    Args:
        feature_sizes: spatial size of each feature map, shallow to deep.
        input_size: the image size the decoder must reach.

    Returns:
        ``(n, stages)``: the number of up-sampling stages and, for each feature (shallow to deep),
        its stage index (the deepest feature is stage 0).
    """
    r0 = feature_sizes[-1]
    n = max(1, math.ceil(math.log2(input_size / r0) - 1e-9))
    stages = [0] * len(feature_sizes)
    previous = 0
    for i in range(len(feature_sizes) - 2, -1, -1):  # deepest-but-one first
        nearest = round(math.log2(max(feature_sizes[i], 1) / r0))
        stage = min(max(previous + 1, nearest), n - 1) if n > 1 else 0
        stages[i] = stage
        previous = stage
    return n, stages


def _project(in_channels: int, out_channels: int, up: int, norm: str) -> nn.Module:
    """MONAI UNETR block bringing a feature map ``up`` doublings closer to the input resolution."""
    from monai.networks.blocks import UnetrBasicBlock, UnetrPrUpBlock

    if up <= 0:
        return UnetrBasicBlock(2, in_channels, out_channels, kernel_size=3, stride=1, norm_name=norm, res_block=True)
    return UnetrPrUpBlock(
        2, in_channels, out_channels, num_layer=up - 1, kernel_size=3, stride=1, upsample_kernel_size=2,
        norm_name=norm, conv_block=True, res_block=True,
    )


@register_head("segmentation")
class SegmentationHead(TaskHead):
    """UNETR-style decoder (Hatamizadeh et al. 2022) over several depths of the CLIP image tower.

    Features come from ``CLIPBackbone.forward_intermediates`` (ViT tokens reshaped to maps, or the
    timm ResNet's feature pyramid), are brought to their decoder stage with MONAI's
    ``UnetrPrUpBlock`` / ``UnetrBasicBlock``, and merged coarse to fine with ``UnetrUpBlock``; the
    last stage takes a convolutional skip from the image itself.  Logits come out at the input
    resolution.  Volumes ``(B, C, D, H, W)`` (``spatial_dims: 3``) are segmented slice by slice,
    in micro-batches of the backbone's ``slice_batch_size`` slices
    (:func:`framework.backbone.slices.over_slices`).  Slices or images larger in-plane than the
    task's input size are, with ``large_slices: sliding_window``, segmented window by window at full
    resolution (MONAI ``sliding_window_inference``, windows of the input size, overlap
    ``window_overlap``, Gaussian blending); with ``resize`` they are resized to the input size and the logits resized
    back.
    The decoder is built in :meth:`on_add`, when the backbone's feature shapes are known, so a
    checkpoint rebuilds it identically before strict loading.

    Loss: MONAI ``DiceCELoss`` (softmax, one-hot targets).  Metrics: Dice (``dice``, the matrix
    score, per image then averaged, foreground labels only) and mean IoU, from torchmetrics.

    Args:
        spec: a ``segmentation`` task.
        embed_dim: backbone embedding width (unused; heads share one constructor signature).
        feature_indices: which blocks/stages of the image tower to read (open_clip semantics;
            ``None`` = all with more than one spatial element).  For deep ViTs pick a few, e.g. ``[2, 5, 8, 11]``.
        feature_size: channels of the finest decoder stage (doubled per coarser stage, up to 8x).
        norm: MONAI norm name for the decoder blocks (``"instance"``, ``"batch"``).
        lambda_dice: weight of the Dice term.
        lambda_ce: weight of the cross-entropy term.
        large_slices: ``"sliding_window"`` or ``"resize"`` (see above); ``None``: sliding windows for
            volumes (``spatial_dims: 3``), resizing for 2D images (what MedCL did before, so 2D
            results stay comparable).
        window_overlap: overlap of neighbouring sliding windows (0 to < 1; 0.25 by default, 0 is
            about half the windows on a large slice).

    Raises:
        ValueError: on invalid sizes, weights, ``large_slices`` or ``window_overlap``.
    """

    score_name = "dice"

    def __init__(
        self,
        spec: TaskSpec,
        embed_dim: int,
        feature_indices: Optional[List[int]] = None,
        feature_size: int = 16,
        norm: str = "instance",
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        large_slices: Optional[str] = None,
        window_overlap: float = 0.25,
    ) -> None:
        super().__init__(spec, embed_dim)
        if isinstance(window_overlap, bool) or not isinstance(window_overlap, (int, float)) or not 0.0 <= window_overlap < 1.0:
            raise ValueError(f"{type(self).__name__}: window_overlap expected a number in [0, 1), found {window_overlap!r}")
        self.window_overlap = float(window_overlap)
        if large_slices not in (None, "sliding_window", "resize"):
            raise ValueError(f"{type(self).__name__}: large_slices expected null, 'sliding_window' or 'resize', found {large_slices!r}")
        self.large_slices = large_slices or ("sliding_window" if spec.spatial_dims == 3 else "resize")
        if isinstance(feature_size, bool) or not isinstance(feature_size, int) or feature_size < 1:
            raise ValueError(f"{type(self).__name__}: feature_size expected a positive integer, found {feature_size!r}")
        if lambda_dice < 0 or lambda_ce < 0 or lambda_dice + lambda_ce == 0:
            raise ValueError(f"{type(self).__name__}: lambda_dice and lambda_ce expected >= 0 and not both 0, found {lambda_dice}, {lambda_ce}")
        from monai.losses import DiceCELoss

        self.feature_indices = list(feature_indices) if feature_indices is not None else None
        self.feature_size = feature_size
        self.norm = norm
        self.criterion = DiceCELoss(
            include_background=False, to_onehot_y=True, softmax=True, lambda_dice=lambda_dice, lambda_ce=lambda_ce
        )
        self.plan: Optional[Tuple[int, List[int]]] = None

    # ------------------------------------------------------------------ construction
    def _channels(self, stage: int, n: int) -> int:
        return self.feature_size * 2 ** min(n - stage, 3)

    def on_add(self, backbone: nn.Module) -> None:
        from monai.networks.blocks import UnetOutBlock, UnetrBasicBlock, UnetrPrUpBlock, UnetrUpBlock

        shapes = backbone.intermediate_shapes(self.feature_indices)
        if self.feature_indices is None and any(h * w == 1 for _, h, w in shapes):
            # a 1x1 map (a ResNet's last stage at 28 px) carries no layout and breaks instance norm
            self.feature_indices = [i for i, (_, h, w) in enumerate(shapes) if h * w > 1]
            shapes = [s for s in shapes if s[1] * s[2] > 1]
        size = backbone.current_size[0]  # the task's input size (MedCLModel.new_head sets it)
        n, stages = plan_decoder([h for _, h, _ in shapes], size)
        self.plan = (n, stages)
        self.projections = nn.ModuleList()
        for (channels, height, _), stage in zip(shapes, stages):
            up = round(math.log2(shapes[-1][1] * 2**stage / height)) if stage else 0
            self.projections.append(_project(channels, self._channels(stage, n), up, self.norm))
        # the skip sees the prepared image: 3 channels, or the task's own count behind a patch-embedding adapter
        skip_channels = self.spec.in_channels if self.spec.in_channels not in (1, 3) else 3
        self.image_skip = UnetrBasicBlock(2, skip_channels, self._channels(n, n), kernel_size=3, stride=1, norm_name=self.norm, res_block=True)
        fed = set(stages)
        self.up_blocks = nn.ModuleList()
        for stage in range(1, n + 1):
            cin, cout = self._channels(stage - 1, n), self._channels(stage, n)
            if stage in fed or stage == n:
                self.up_blocks.append(UnetrUpBlock(2, cin, cout, kernel_size=3, upsample_kernel_size=2, norm_name=self.norm, res_block=True))
            else:  # no backbone feature at this resolution: up-sample without a skip
                self.up_blocks.append(UnetrPrUpBlock(2, cin, cout, num_layer=0, kernel_size=3, stride=1, upsample_kernel_size=2, norm_name=self.norm))
        self.out = UnetOutBlock(2, self._channels(n, n), self.spec.num_classes)

    # ------------------------------------------------------------------ forward
    def forward(self, backbone: nn.Module, images: Tensor) -> Tensor:
        if self.plan is None:
            raise RuntimeError(f"task '{self.spec.name}': the segmentation head was not added to a model (on_add builds its decoder)")
        self.check_images(images)
        if images.ndim == 5:  # volumes: segment every slice in micro-batches, restack along depth
            logits = over_slices(
                lambda slices: self._segment_2d(backbone, slices), images,
                getattr(backbone, "slice_batch_size", DEFAULT_SLICE_BATCH_SIZE), getattr(backbone, "checkpoint_slices", False),
            )
            return logits.transpose(1, 2)
        return self._segment_2d(backbone, images)

    def _segment_2d(self, backbone: nn.Module, images: Tensor) -> Tensor:
        """Logits of ``(n, C, H, W)`` images; larger than the input size: window by window (``large_slices``)."""
        size = tuple(backbone.current_size)
        if self.large_slices == "sliding_window" and (images.shape[-2] > size[0] or images.shape[-1] > size[1]):
            from monai.inferers import sliding_window_inference

            if images.dtype == torch.uint8:  # MONAI accumulates windows in the input's dtype
                images = images.to(torch.float32).div_(255.0)
            return sliding_window_inference(
                images, roi_size=size, sw_batch_size=getattr(backbone, "slice_batch_size", DEFAULT_SLICE_BATCH_SIZE),
                predictor=lambda window: self._forward_2d(backbone, window), overlap=self.window_overlap, mode="gaussian",
            )
        return self._forward_2d(backbone, images)

    def _forward_2d(self, backbone: nn.Module, images: Tensor) -> Tensor:
        n, stages = self.plan
        prepared = backbone.prepare_images(images)
        features = backbone.forward_intermediates(prepared, self.feature_indices, prepared=True)
        r0 = features[-1].shape[-1]
        skips: Dict[int, Tensor] = {}
        for feature, stage, project in zip(features, stages, self.projections):
            x = project(feature)
            side = r0 * 2**stage
            if x.shape[-1] != side:
                x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False)
            skips[stage] = x if stage not in skips else skips[stage] + x
        x = skips.pop(0)
        side = r0 * 2**n
        image = prepared if prepared.shape[-1] == side else F.interpolate(prepared, size=(side, side), mode="bilinear", align_corners=False)
        skips[n] = self.image_skip(image)
        for stage, block in zip(range(1, n + 1), self.up_blocks):
            x = block(x, skips[stage]) if stage in skips else block(x)
        logits = self.out(x)
        if tuple(logits.shape[-2:]) != tuple(images.shape[-2:]):
            logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
        return logits

    # ------------------------------------------------------------------ training and evaluation
    def _check_target(self, outputs: Tensor, target: Tensor) -> None:
        expected = (outputs.shape[0], *outputs.shape[2:])
        if tuple(target.shape) != expected:
            raise ValueError(
                f"task '{self.spec.name}': mask expected shape {expected} (the image's spatial shape), found {tuple(target.shape)}"
            )

    def loss(self, outputs: Tensor, target: Tensor) -> Tensor:
        self._check_target(outputs, target)
        return self.criterion(outputs.float(), target.unsqueeze(1).long())

    def distillation_loss(self, outputs: Tensor, teacher_outputs: Tensor, temperature: float = 1.0) -> Tensor:
        """Per-pixel (per-voxel) Hinton KL over the label channel, ``* T^2``, averaged over samples and pixels."""
        self._check_distillation(outputs, teacher_outputs)
        return soft_kl_divergence(outputs, teacher_outputs, temperature, dim=1)

    def make_metrics(self) -> MetricCollection:
        k = self.spec.num_classes
        return MetricCollection(
            {
                "dice": DiceScore(num_classes=k, include_background=False, average="macro", input_format="index"),
                "iou": MeanIoU(num_classes=k, include_background=False, input_format="index"),
            }
        )

    def unrouted_outputs(self, outputs: Tensor, target: Tensor) -> Tensor:
        """Background everywhere: no mask is written for a wrongly routed image."""
        empty = torch.full_like(outputs, -1e4, dtype=torch.float32)
        empty[:, 0] = 1e4
        return empty

    def metric_inputs(self, outputs: Tensor, target: Tensor) -> Dict[str, Tensor]:
        self._check_target(outputs, target)
        return {"preds": outputs.argmax(dim=1), "target": target.long()}

    def predict(self, outputs: Tensor) -> Dict[str, Tensor]:
        """The label mask, and each foreground label's share of the image (``area``)."""
        mask = outputs.argmax(dim=1)
        labels = torch.arange(1, self.spec.num_classes, device=mask.device)
        area = (mask.flatten(1).unsqueeze(1) == labels.view(1, -1, 1)).float().mean(dim=2)
        return {"mask": mask, "area": area}

    def column_names(self, key: str, width: int) -> List[str]:
        if key == "area" and width == len(self.spec.label_names):
            return [f"area({name})" for name in self.spec.label_names]
        return super().column_names(key, width)
