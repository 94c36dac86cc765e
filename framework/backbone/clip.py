"""CLIP backbone over open_clip.

open_clip's ``create_model_and_transforms`` / ``get_tokenizer`` are the only entry points used
to build a model, so every open_clip architecture works.  Two tiny architectures for CPU runs at
28–64 px ship with MedCL as JSON files and are registered with ``open_clip.add_model_config``:

* ``medcl-vit-tiny``       — ViT, 4 layers, width 128, patch 4 (0.56 M image-tower parameters);
* ``medcl-resnet18-tiny``  — timm ResNet-18 image tower (11 M parameters).

Each also exists with the pretrained all-MiniLM-L6-v2 text tower (``medcl-vit-tiny-minilm``,
``medcl-resnet18-tiny-minilm``; see :mod:`framework.backbone.minilm`), whose prompts carry
meaning before any training.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from framework.backbone.minilm import MINILM_SUFFIX, minilm_architectures, register_minilm_configs
from framework.checkpoints import ALLOW_PICKLE_ENV, allow_pickle

__all__ = ["CLIPBackbone", "MODEL_CONFIG_DIR", "register_model_configs", "list_architectures"]

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
_REGISTERED = False


def register_model_configs(path: Union[str, Path, None] = None) -> None:
    """Register JSON architecture files with open_clip.

    Args:
        path: a ``.json`` file or a folder of them; defaults to MedCL's shipped tiny configs.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
    """
    global _REGISTERED
    target = Path(path) if path is not None else MODEL_CONFIG_DIR
    if not target.exists():
        raise FileNotFoundError(f"open_clip model config path not found: {target}")
    if path is None and _REGISTERED:
        return
    open_clip.add_model_config(target)
    if path is None:
        _REGISTERED = True


def list_architectures() -> List[str]:
    """All architecture names open_clip can build, MedCL's tiny ones included."""
    register_model_configs()
    return open_clip.list_models()


def _looks_like_path(value: str) -> bool:
    return os.sep in value or value.startswith(".") or value.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt"))


class CLIPBackbone(nn.Module):
    """An open_clip model with a MedCL-friendly interface.

    Images are expected as uint8 tensors (``v`` means ``v / 255``) or float tensors in ``[0, 1]``
    with shape ``(B, C, H, W)``; the backbone converts uint8 to float, repeats grayscale to three
    channels, resizes to the architecture's image size and applies the model's own normalisation,
    so data modules never need to know which backbone is used.

    Args:
        model_name: any open_clip architecture name (see :func:`list_architectures`).
        pretrained: ``None`` (random init), a local checkpoint file, or an open_clip pretrained tag
            (e.g. ``"openai"``), which open_clip downloads; without internet pass a local file.
        image_size: override the architecture's input size (e.g. 64 for 64-px segmentation data).
        freeze_image_tower: lock the image tower (open_clip ``lock_image_tower``).
        freeze_text_tower: lock the text tower (open_clip ``lock_text_tower``).  Prompt embeddings
            are cached only while the text tower is frozen.
        unlocked_image_groups: with ``freeze_image_tower``, leave this many last layer groups trainable.
        cache_dir: open_clip download cache for pretrained tags.

    Raises:
        ValueError: for an unknown architecture or invalid sizes.
        FileNotFoundError: if ``pretrained`` looks like a path but the file does not exist.
        RuntimeError: if a pretrained tag cannot be downloaded (the message says how to pass a local file).

    Example::

        backbone = CLIPBackbone("medcl-vit-tiny")
        emb = backbone.encode_image(torch.rand(4, 1, 28, 28))        # (4, 128), L2-normalised
        txt = backbone.encode_prompts(["a CT slice of the liver"])   # (1, 128), cached
    """

    def __init__(
        self,
        model_name: str = "medcl-vit-tiny",
        pretrained: Optional[str] = None,
        image_size: Optional[int] = None,
        freeze_image_tower: bool = False,
        freeze_text_tower: bool = True,
        unlocked_image_groups: int = 0,
        cache_dir: Optional[str] = None,
    ) -> None:
        super().__init__()
        register_model_configs()
        if isinstance(model_name, str) and model_name.endswith(MINILM_SUFFIX):
            register_minilm_configs(MODEL_CONFIG_DIR)
        if not isinstance(model_name, str) or model_name not in open_clip.list_models():
            tiny = sorted({m for m in open_clip.list_models() if m.startswith("medcl-")} | set(minilm_architectures()))
            raise ValueError(
                f"CLIPBackbone: unknown open_clip architecture model_name={model_name!r}; "
                f"MedCL's CPU-sized ones are {tiny}, see framework.backbone.list_architectures() for all"
            )
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8):
            raise ValueError(f"CLIPBackbone: image_size expected None or an integer >= 8, found {image_size!r}")
        if unlocked_image_groups < 0:
            raise ValueError(f"CLIPBackbone: unlocked_image_groups expected >= 0, found {unlocked_image_groups}")
        self.model_name = model_name
        self.pretrained = self._resolve_pretrained(model_name, pretrained)
        try:
            model, _, _ = open_clip.create_model_and_transforms(
                model_name,
                pretrained=self.pretrained,
                force_image_size=image_size,
                cache_dir=cache_dir,
                weights_only=not allow_pickle(),  # never run pickled code unless MEDCL_ALLOW_PICKLE=1
            )
        except Exception as err:
            if self.pretrained and os.path.isfile(self.pretrained):
                first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                raise ValueError(
                    f"CLIPBackbone: pretrained file {self.pretrained!r} could not be loaded into {model_name!r} "
                    f"({type(err).__name__}: {first}); expected open_clip weights for this architecture (.safetensors or "
                    f"a torch.save state dict; pickled objects load only with {ALLOW_PICKLE_ENV}=1, if you trust the file)"
                ) from None
            if not isinstance(err, RuntimeError):
                raise
            if pretrained and "download" in str(err).lower():
                raise RuntimeError(
                    f"CLIPBackbone: could not download pretrained weights {pretrained!r} for {model_name!r} "
                    f"(no internet?). Download them on a machine with internet, e.g. "
                    f"`python -c \"import open_clip; open_clip.create_model('{model_name}', pretrained='{pretrained}', "
                    f"cache_dir='weights')\"`, then pass the local file: pretrained=/path/to/open_clip_model.safetensors"
                ) from err
            raise
        self.clip = model
        self.tokenizer = open_clip.get_tokenizer(model_name)
        visual = model.visual
        size = getattr(visual, "image_size", None) or (image_size, image_size)
        self.image_size: Tuple[int, int] = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.embed_dim: int = int(open_clip.get_model_config(model_name)["embed_dim"])
        self.freeze_image_tower = bool(freeze_image_tower)
        self.freeze_text_tower = bool(freeze_text_tower)
        if self.freeze_image_tower:
            model.lock_image_tower(unlocked_groups=unlocked_image_groups, freeze_bn_stats=True)
        if self.freeze_text_tower:
            model.lock_text_tower(unlocked_layers=0, freeze_layer_norm=True)
        # CLIP's own logit scale is unused: every head owns its temperature.
        model.logit_scale.requires_grad_(False)
        if getattr(model, "logit_bias", None) is not None:
            model.logit_bias.requires_grad_(False)
        visual_ids = {id(p) for p in model.visual.parameters()} | {id(model.logit_scale)}
        # plain list, not registered: the same Parameter objects, kept across .to() moves
        self._text_params = [p for p in model.parameters() if id(p) not in visual_ids]
        if self.freeze_text_tower:  # Hugging Face text towers leave their projection out of the lock
            for p in self._text_params:
                p.requires_grad_(False)
        self._text_cache: Dict[Tuple[str, ...], Tensor] = {}
        #: channels of the active modality's own patch embedding (set by framework.adapters), or None
        self.extra_channels: Optional[int] = None
        # Loaded weights (checkpoint restore) make cached prompt embeddings stale.
        self.register_load_state_dict_post_hook(lambda module, _keys: module.clear_text_cache())

    @staticmethod
    def _resolve_pretrained(model_name: str, pretrained: Optional[str]) -> Optional[str]:
        if pretrained in (None, "", "none", "None"):
            return None
        if not isinstance(pretrained, str):
            raise ValueError(f"CLIPBackbone: pretrained expected None, a file path or a tag, found {pretrained!r}")
        if os.path.isfile(pretrained):
            return pretrained
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        if pretrained in tags:
            return pretrained
        if _looks_like_path(pretrained):
            raise FileNotFoundError(f"CLIPBackbone: pretrained checkpoint file not found: {pretrained}")
        raise ValueError(
            f"CLIPBackbone: pretrained={pretrained!r} is neither an existing file nor a known tag for "
            f"{model_name!r} (known tags: {tags or 'none'})"
        )

    # ------------------------------------------------------------------ image side
    def prepare_images(self, images: Tensor) -> Tensor:
        """Validate, expand to RGB, resize and normalise images for the image tower.

        ``images`` are uint8 (value ``v`` means ``v / 255``, as datasets serve uint8 sources) or
        float in ``[0, 1]``; uint8 batches are converted to the model's float dtype and divided by
        255 first, so a uint8 batch and the same batch as ``float / 255`` give identical outputs.

        Raises:
            ValueError: on a wrong rank or channel count.
        """
        if images.ndim != 4:
            raise ValueError(f"CLIPBackbone: images expected shape (B, C, H, W), found {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.to(self.pixel_mean.dtype).div_(255.0)
        channels = images.shape[1]
        mean, std = self.pixel_mean, self.pixel_std
        if self.extra_channels is not None:  # the active modality has its own patch embedding
            if channels != self.extra_channels:
                raise ValueError(
                    f"CLIPBackbone: the active modality's patch embedding expects {self.extra_channels} channels, found {channels}"
                )
            # every channel is normalised like a grayscale image (the mean of the RGB statistics)
            mean, std = mean.mean(dim=1, keepdim=True), std.mean(dim=1, keepdim=True)
        elif channels == 1:
            images = images.expand(-1, 3, -1, -1)
        elif channels != 3:
            raise ValueError(
                f"CLIPBackbone: images expected 1 or 3 channels, found {channels}; other channel counts need a modality "
                f"adapter (a task with that in_channels gives its modality a new patch embedding)"
            )
        if tuple(images.shape[-2:]) != self.image_size:
            images = F.interpolate(images, size=self.image_size, mode="bilinear", align_corners=False)
        return (images - mean) / std

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        """Pooled image embedding ``(B, embed_dim)``, L2-normalised by default.

        ``images`` are ``(B, C, H, W)`` images or ``(B, C, D, H, W)`` volumes (see :meth:`encode_volume`).
        """
        if images.ndim == 5:
            return self.encode_volume(images, normalize=normalize)
        return self.clip.encode_image(self.prepare_images(images), normalize=normalize)

    def _encode_slices(self, volumes: Tensor) -> Tensor:
        """Per-slice embeddings ``(B, E, D)`` of ``(B, C, D, H, W)`` volumes."""
        b, c, d, h, w = volumes.shape
        slices = volumes.permute(0, 2, 1, 3, 4).reshape(b * d, c, h, w)
        return self.clip.encode_image(self.prepare_images(slices), normalize=False).reshape(b, d, -1).permute(0, 2, 1)

    def encode_volume(self, volumes: Tensor, normalize: bool = True) -> Tensor:
        """Volume embedding ``(B, embed_dim)``: every axial slice is encoded by the 2D image tower
        and the slice embeddings are averaged.

        This is the "2.5D" design of MedMNIST v2's baselines: it reuses the CLIP image tower (and
        any pretrained 2D weights) unchanged, for any number of slices.  Slices larger in-plane
        than the model input are not shrunk: MONAI ``sliding_window_inference`` tiles them with
        windows of the model's input size and averages the window embeddings.

        Raises:
            ValueError: if ``volumes`` is not ``(B, C, D, H, W)``.
        """
        if volumes.ndim != 5:
            raise ValueError(f"CLIPBackbone: volumes expected shape (B, C, D, H, W), found {tuple(volumes.shape)}")
        d, h, w = volumes.shape[-3:]
        if h > self.image_size[0] or w > self.image_size[1]:
            from monai.inferers import sliding_window_inference

            if volumes.dtype == torch.uint8:  # MONAI accumulates windows in the input's dtype
                volumes = volumes.to(self.pixel_mean.dtype).div_(255.0)

            # one embedding per slice and window: the stitched map is (B, E, D, ~H/h, ~W/w)
            maps = sliding_window_inference(
                volumes, roi_size=(d, *self.image_size), sw_batch_size=4, overlap=0.0,
                predictor=lambda window: self._encode_slices(window)[..., None, None],
            )
            pooled = maps.flatten(2).mean(dim=2)
        else:
            pooled = self._encode_slices(volumes).mean(dim=2)
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def forward(self, images: Tensor) -> Tensor:
        return self.encode_image(images)

    def forward_intermediates(
        self, images: Tensor, indices: Union[int, Sequence[int], None] = None, prepared: bool = False
    ) -> List[Tensor]:
        """Feature maps from several depths of the image tower, for dense heads.

        Args:
            images: ``(B, C, H, W)`` uint8 or float in ``[0, 1]``, or already passed through :meth:`prepare_images`.
            indices: open_clip semantics: an int takes the last *n* blocks, a sequence selects
                block indices, ``None`` takes all.
            prepared: ``images`` come from :meth:`prepare_images` (skip preparing them again).

        Returns:
            list of ``(B, C_i, H_i, W_i)`` tensors, shallow to deep.
        """
        out = self.clip.forward_intermediates(
            image=images if prepared else self.prepare_images(images),
            image_indices=indices,
            intermediates_only=True,
            image_output_fmt="NCHW",
        )
        return list(out["image_intermediates"])

    @torch.no_grad()
    def intermediate_shapes(self, indices: Union[int, Sequence[int], None] = None) -> List[Tuple[int, int, int]]:
        """``(channels, height, width)`` of each :meth:`forward_intermediates` map at the model's input size.

        Found with one dummy forward pass in eval mode, so batch-norm statistics are untouched.
        """
        was_training = self.training
        self.eval()
        try:
            probe = torch.zeros(1, 3, *self.image_size, device=self.pixel_mean.device)
            return [tuple(f.shape[1:]) for f in self.forward_intermediates(probe, indices)]
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ text side
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings ``(len(prompts), embed_dim)``.

        While the text tower is frozen the result is computed once per prompt tuple and device and
        cached (no gradient); with a trainable text tower it is recomputed so gradients flow.
        """
        key = tuple(prompts)
        device = self.pixel_mean.device
        text_trainable = any(p.requires_grad for p in self._text_params)
        if not text_trainable:
            cached = self._text_cache.get(key)
            if cached is None or cached.device != device:
                with torch.no_grad():
                    cached = self._encode_text(key, device)
                self._text_cache[key] = cached
            return cached
        return self._encode_text(key, device)

    def _encode_text(self, prompts: Tuple[str, ...], device: torch.device) -> Tensor:
        tokens = self.tokenizer(list(prompts)).to(device)
        return self.clip.encode_text(tokens, normalize=True)

    def clear_text_cache(self) -> None:
        """Drop cached prompt embeddings (call after changing text-tower weights by hand)."""
        self._text_cache.clear()

    def _apply(self, fn, *args, **kwargs):  # device/dtype moves invalidate the cache
        self._text_cache.clear()
        return super()._apply(fn, *args, **kwargs)
