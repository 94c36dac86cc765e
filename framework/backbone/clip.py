"""CLIP backbone over open_clip.

open_clip's ``create_model_and_transforms`` / ``get_tokenizer`` are the only entry points used
to build a model, so every open_clip architecture works.  Two tiny architectures for CPU runs at
28–64 px ship with MedCL as JSON files and are registered with ``open_clip.add_model_config``:

* ``medcl-vit-tiny``       — ViT, 4 layers, width 128, patch 4 (0.56 M image-tower parameters);
* ``medcl-resnet18-tiny``  — timm ResNet-18 image tower (11 M parameters).

Each also exists with the pretrained all-MiniLM-L6-v2 text tower (``medcl-vit-tiny-minilm``,
``medcl-resnet18-tiny-minilm``; see :mod:`framework.backbone.minilm`), whose prompts carry
meaning before any training.

Why one file of over 350 lines: :class:`CLIPBackbone` is a single ``nn.Module`` whose weight loading,
image side and text side all act on the same open_clip model and cached state, so splitting it would
scatter one concept; where a name resolves is in :mod:`framework.backbone.architecture` and
:mod:`framework.backbone.sources`, slice pooling in :mod:`framework.backbone.slices`.
"""
from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from framework.backbone.architecture import Architecture, quiet_local_dir_build, resolve_architecture, resolve_weights, schema_of
from framework.backbone.resolution import check_input_size, enable_any_input_size, patch_multiple
from framework.backbone.slices import DEFAULT_SLICE_BATCH_SIZE, over_slices, slice_average  # slice_average: also its old import path
from framework.backbone.weights_file import OMITTED_KEY, load_weights_into, read_metadata
from framework.core.checkpoints import ALLOW_PICKLE_ENV, allow_pickle

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


def _eval_frozen(module: nn.Module) -> None:
    """Put every submodule of ``module`` whose parameters are all frozen into eval mode (top-down)."""
    params = list(module.parameters())
    if params and not any(p.requires_grad for p in params):
        module.eval()
        return
    for child in module.children():
        _eval_frozen(child)


class CLIPBackbone(nn.Module):
    """An open_clip model with a MedCL-friendly interface.

    Images are expected as uint8 tensors (``v`` means ``v / 255``) or float tensors in ``[0, 1]``
    with shape ``(B, C, H, W)``; the backbone converts uint8 to float, repeats grayscale to three
    channels, resizes to the architecture's image size and applies the model's own normalisation,
    so data modules never need to know which backbone is used.

    Args:
        model_name: any open_clip architecture name (see :func:`list_architectures`).
        pretrained: ``None`` (random init), a local checkpoint file, a shipped MedCL tag
            (``"medmnist-blood-organa"``, :mod:`framework.backbone.shipped`), or an open_clip pretrained
            tag (e.g. ``"openai"``), which open_clip downloads; without internet pass a local file.
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
        load_weights: bool = True,
        architecture: Optional[Architecture] = None,
    ) -> None:
        super().__init__()
        if image_size is not None and (isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 8):
            raise ValueError(f"CLIPBackbone: image_size expected None or an integer >= 8, found {image_size!r}")
        if unlocked_image_groups < 0:
            raise ValueError(f"CLIPBackbone: unlocked_image_groups expected >= 0, found {unlocked_image_groups}")
        self.model_name = model_name
        self.pretrained = None if pretrained in (None, "", "none", "None") else pretrained
        self.cache_dir = cache_dir
        #: where the model came from (stored in checkpoints: see framework.backbone.architecture)
        self.architecture = architecture if architecture is not None else resolve_architecture(model_name, self.pretrained, cache_dir)
        # A Hugging Face text tower's own pretrained weights (e.g. MiniLM) load while it is built, as open_clip
        # does, when they are on this machine: full CLIP weights loaded later replace them, a MedCL weights
        # file that leaves the frozen text tower out keeps them (framework/backbone/weights_file.py).
        text_source = self.architecture.text_weights
        text_now = bool(text_source) and any((Path(str(text_source)) / name).is_file() for name in ("model.safetensors", "pytorch_model.bin"))
        #: the text transformer holds its own public weights (see load_pretrained)
        self._text_loaded = text_now
        #: the Hugging Face text tower should start from its own weights, but they are not on this machine
        self._text_weights_missing = bool(text_source) and not text_now and self.pretrained is None and self.architecture.weights is None
        folder = self.architecture.materialise(text_source=text_source if text_now else None)
        with quiet_local_dir_build():
            model = open_clip.create_model(
                f"local-dir:{folder}", force_image_size=image_size, pretrained_text=text_now, pretrained_image=False,
                cache_dir=cache_dir, weights_only=not allow_pickle(),
            )
        enable_any_input_size(model.visual)  # each task runs at its own size (framework/backbone/resolution.py)
        self.clip = model
        #: the input size of the task being served (see :meth:`input_size`), None: the tower's own
        self._task_size: Optional[Tuple[int, int]] = None
        plain = schema_of(model_name) is None and model_name in open_clip.list_models()
        self.tokenizer = open_clip.get_tokenizer(model_name if plain else f"local-dir:{folder}")
        visual = model.visual
        size = getattr(visual, "image_size", None) or (image_size, image_size)
        self.image_size: Tuple[int, int] = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        mean = getattr(visual, "image_mean", None) or open_clip.OPENAI_DATASET_MEAN
        std = getattr(visual, "image_std", None) or open_clip.OPENAI_DATASET_STD
        self.register_buffer("pixel_mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        self.embed_dim: int = int(self.architecture.model_cfg["embed_dim"])
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
        #: slices per micro-batch when volumes go through the tower (framework/backbone/slices.py; VolumeMemory sets it)
        self.slice_batch_size: int = DEFAULT_SLICE_BATCH_SIZE
        #: recompute each micro-batch of slices in the backward pass instead of keeping its activations
        self.checkpoint_slices: bool = False
        # Loaded weights (checkpoint restore) make cached prompt embeddings stale.
        self.register_load_state_dict_post_hook(lambda module, _keys: module.clear_text_cache())
        if load_weights:
            self.load_pretrained()

    @property
    def text_weights_loaded(self) -> bool:
        """The Hugging Face text transformer holds its own public weights (loaded when it was built)."""
        return self._text_loaded

    @property
    def weights_source(self) -> Optional[str]:
        """What :meth:`load_pretrained` reads: a local file, or ``None`` (random init)."""
        return resolve_weights(self.pretrained, self.architecture, self.cache_dir)

    def load_pretrained(self) -> Optional[str]:
        """Load the pretrained CLIP weights (``pretrained``, or a hub/folder model's own) into the model.

        Called when a run starts from them; a model restored from a MedCL checkpoint never calls it,
        because the checkpoint holds every weight.

        Returns:
            the file read, or ``None`` if the backbone starts from random weights.

        Raises:
            FileNotFoundError, RuntimeError, ValueError: see :func:`~framework.backbone.architecture.resolve_weights`;
                ValueError also for a file that does not fit the architecture or holds non-finite values.
        """
        path = self.weights_source
        if path is None:
            if self._text_weights_missing:
                log.warning(
                    "CLIPBackbone %s: the text tower's own weights (%s) are not on this machine: it starts from random weights",
                    self.model_name, self.architecture.text_weights,
                )
            return None
        if OMITTED_KEY in read_metadata(path):  # a MedCL file without its frozen text tower's public weights
            if not self._text_loaded:  # e.g. a model rebuilt from a checkpoint's stored architecture
                self._text_loaded = self._load_text_weights_from_source()
            load_weights_into(self.clip, path, self._text_loaded, self.architecture.text_weights)
            self._check_and_note(path)
            return path
        try:
            open_clip.load_checkpoint(self.clip, path, strict=True, weights_only=not allow_pickle())
        except Exception as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ValueError(
                f"CLIPBackbone: pretrained file {path!r} could not be loaded into {self.model_name!r} "
                f"({type(err).__name__}: {first}); expected open_clip weights for this architecture (.safetensors or "
                f"a torch.save state dict; pickled objects load only with {ALLOW_PICKLE_ENV}=1, if you trust the file)"
            ) from None
        self._check_and_note(path)
        return path

    def _load_text_weights_from_source(self) -> bool:
        """Load the Hugging Face text transformer's own public weights from where ``model_name`` resolves on
        this machine (a backbone rebuilt from a checkpoint's stored architecture was built without them);
        ``False`` if they are not here.  :func:`load_weights_into` then checks them by checksum."""
        text = getattr(self.clip, "text", None)
        try:
            source = resolve_architecture(self.model_name, None, self.cache_dir, from_source=True).text_weights
        except Exception:  # the source is not on this machine: the caller says what is missing
            return False
        if text is None or not source or not any((Path(str(source)) / n).is_file() for n in ("model.safetensors", "pytorch_model.bin")):
            return False
        from transformers import AutoModel

        public = AutoModel.from_pretrained(str(source)).state_dict()
        missing, _unused = text.transformer.load_state_dict(public, strict=False)  # _unused: e.g. a pooler open_clip does not use
        if missing:
            return False
        self.clear_text_cache()
        return True

    def _check_and_note(self, path: str) -> None:
        from framework.core.divergence import check_state_dict

        check_state_dict(self.clip.state_dict(), f"pretrained {path!r}")
        self.clear_text_cache()
        log.info("CLIPBackbone %s: pretrained weights loaded from %s", self.model_name, path)

    # ------------------------------------------------------------------ image side
    @property
    def current_size(self) -> Tuple[int, int]:
        """``(H, W)`` the image tower runs at now: the served task's size, else :attr:`image_size`."""
        return self._task_size or self.image_size

    @contextlib.contextmanager
    def input_size(self, size: Optional[Sequence[int]]) -> Iterator[None]:
        """Run the image tower at ``size`` (a task's ``image_size``) for the duration of the block.

        ViT towers resample their position embeddings to the new patch grid, convolutional towers
        take the size as it is (:mod:`framework.backbone.resolution`).

        Args:
            size: ``(H, W)`` (a ViT runs at it rounded up to a multiple of its patch size), or
                ``None``/empty for the tower's own :attr:`image_size`.

        Raises:
            ValueError: if the tower cannot run at that size.
        """
        size = tuple(int(v) for v in size) if size else None
        if size is not None:
            check_input_size(self.clip.visual, self.image_size, size, f"CLIPBackbone {self.model_name!r}")
            size = patch_multiple(self.clip.visual, size)  # a ViT's patch grid covers every pixel
        previous, self._task_size = self._task_size, size
        try:
            yield
        finally:
            self._task_size = previous

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
        if tuple(images.shape[-2:]) != self.current_size:
            images = F.interpolate(images, size=self.current_size, mode="bilinear", align_corners=False)
        return (images - mean) / std

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        """Pooled image embedding ``(B, embed_dim)``, L2-normalised by default.

        ``images`` are ``(B, C, H, W)`` images or ``(B, C, D, H, W)`` volumes (see :meth:`encode_volume`).
        """
        if images.ndim == 5:
            return self.encode_volume(images, normalize=normalize)
        return self.clip.encode_image(self.prepare_images(images), normalize=normalize)

    def _encode_slices(self, volumes: Tensor) -> Tensor:
        """Per-slice embeddings ``(B, E, D)`` of ``(B, C, D, H, W)`` volumes, in micro-batches of
        :attr:`slice_batch_size` slices (:func:`framework.backbone.slices.over_slices`)."""
        embed = lambda slices: self.clip.encode_image(self.prepare_images(slices), normalize=False)  # noqa: E731
        return over_slices(embed, volumes, self.slice_batch_size, self.checkpoint_slices).transpose(1, 2)

    def encode_volume(self, volumes: Tensor, normalize: bool = True) -> Tensor:
        """Volume embedding ``(B, embed_dim)``: every axial slice is encoded by the 2D image tower
        and the slice embeddings are averaged.

        This is the "2.5D" design of MedMNIST v2's baselines: it reuses the CLIP image tower (and
        any pretrained 2D weights) unchanged, for any number of slices.  Slices go through the tower
        in micro-batches of :attr:`slice_batch_size` (memory bounded by one micro-batch at
        inference; with :attr:`checkpoint_slices` in training too).  Slices larger in-plane than
        the model input are not shrunk: MONAI ``sliding_window_inference`` tiles them with windows
        of the model's input size and averages the window embeddings.

        Raises:
            ValueError: if ``volumes`` is not ``(B, C, D, H, W)``.
        """
        if volumes.ndim != 5:
            raise ValueError(f"CLIPBackbone: volumes expected shape (B, C, D, H, W), found {tuple(volumes.shape)}")
        if volumes.dtype == torch.uint8 and (volumes.shape[-2] > self.current_size[0] or volumes.shape[-1] > self.current_size[1]):
            volumes = volumes.to(self.pixel_mean.dtype).div_(255.0)  # MONAI accumulates windows in the input's dtype
        pooled = slice_average(self._encode_slices, volumes, self.current_size)
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
        """``(channels, height, width)`` of each :meth:`forward_intermediates` map at :attr:`current_size`.

        Found with one dummy forward pass in eval mode, so batch-norm statistics are untouched.
        """
        was_training = self.training
        self.eval()
        try:
            probe = torch.zeros(1, 3, *self.current_size, device=self.pixel_mean.device)
            return [tuple(f.shape[1:]) for f in self.forward_intermediates(probe, indices)]
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ text side
    def encode_prompts(self, prompts: Sequence[str], cache: bool = True) -> Tensor:
        """L2-normalised text embeddings ``(len(prompts), embed_dim)``.

        While the text tower is frozen the result is computed once per prompt tuple and device and
        cached (no gradient); with a trainable text tower it is recomputed so gradients flow.

        Args:
            prompts: the texts.
            cache: keep a frozen tower's result for this tuple (``False`` for one-off texts, e.g. captions).
        """
        key = tuple(prompts)
        device = self.pixel_mean.device
        text_trainable = any(p.requires_grad for p in self._text_params)
        if not text_trainable and not cache:
            with torch.no_grad(), self._frozen_text_in_eval():
                return self._encode_text(key, device)
        if not text_trainable:
            cached = self._text_cache.get(key)
            if cached is None or cached.device != device:
                with torch.no_grad(), self._frozen_text_in_eval():
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

    def text_modules(self) -> List[nn.Module]:
        """The modules of the text tower (a Hugging Face tower's ``text``, or open_clip's own text transformer parts)."""
        if isinstance(getattr(self.clip, "text", None), nn.Module):
            return [self.clip.text]
        return [m for m in (getattr(self.clip, name, None) for name in ("transformer", "token_embedding", "ln_final")) if isinstance(m, nn.Module)]

    @contextlib.contextmanager
    def _frozen_text_in_eval(self) -> Iterator[None]:
        """The frozen text tower in eval mode for the block (whatever mode the model is in: a model that was never
        put into train or eval mode, e.g. while heads are built in setup, is in training mode), then as before."""
        modes = [(m, m.training) for root in self.text_modules() for m in root.modules()]
        for root in self.text_modules():
            _eval_frozen(root)
        try:
            yield
        finally:
            for module, mode in modes:
                module.training = mode

    def train(self, mode: bool = True) -> "CLIPBackbone":
        """As :meth:`nn.Module.train`, but the frozen parts of the text tower stay in eval mode: their dropout (a
        Hugging Face tower has some) would otherwise make every prompt embedding, and the cached ones forever, a
        noisy draw."""
        super().train(mode)
        if mode:
            for module in self.text_modules():
                _eval_frozen(module)
        return self

    def _apply(self, fn, *args, **kwargs):  # device/dtype moves invalidate the cache
        self._text_cache.clear()
        return super()._apply(fn, *args, **kwargs)
