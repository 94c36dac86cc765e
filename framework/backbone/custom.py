"""Custom backbones: a user's own image tower, named by ``class_path``, behind CLIPBackbone's interface.

Any ``nn.Module`` that follows the small protocol below becomes MedCL's backbone; heads,
paradigms, replay and evaluation run on it unchanged::

    model:
      class_path: framework.paradigms.ContinualModule
      init_args:
        backbone:
          class_path: framework.backbone.towers.MonaiViT3D   # any importable class
          init_args: {image_size: [28, 28, 28], embed_dim: 128}

The tower protocol
------------------
Required attributes (set in ``__init__``):

* ``embed_dim: int`` — width of the embedding :meth:`forward` returns.
* ``image_size: tuple`` — the input size the tower runs at: ``(H, W)`` for a 2D tower,
  ``(D, H, W)`` for a 3D one (an int means that size on every axis).
* ``spatial_dims: int`` — ``2`` (images) or ``3`` (volumes).
* ``in_channels: int`` — channels :meth:`forward` takes.

Required method:

* ``forward(x) -> (B, embed_dim)`` on *prepared* input: float ``(B, in_channels, *image_size)``,
  uint8 scaled by 1/255 and normalised as ``(x - image_mean) / image_std``.  Return the raw pooled
  embedding; MedCL L2-normalises it where heads need that.

Optional:

* ``image_mean``, ``image_std`` — a float or one value per channel, applied after the 1/255
  scaling; default ``0.5`` and ``0.5`` (inputs then lie in ``[-1, 1]``).
* ``forward_intermediates(x, indices) -> list of (B, C_i, H_i, W_i)`` — feature maps of several
  depths, shallow to deep, for the segmentation decoder (2D towers only); ``indices`` as in
  open_clip: an int takes the last *n*, a list selects those, ``None`` takes all.
* ``encode_text(prompts: list[str]) -> (N, embed_dim)`` — a text side.  Without one there are no
  prompt embeddings: classification and multilabel heads learn their class embeddings from a
  random start (whatever ``learn_class_embeddings`` says), and their untrained ("zero-shot")
  scores are those of random class embeddings.
* ``load_pretrained() -> Optional[str]`` — load pretrained weights and return where they came from
  (``None``: none).  MedCL calls it when a run starts from scratch, never when a checkpoint is
  restored (the checkpoint holds every weight): read weight files here, not in ``__init__``.

How inputs reach the tower (:meth:`CustomBackbone.prepare_images`): uint8 ``v`` becomes ``v / 255``;
a 1-channel input is repeated to ``in_channels``; the input is resized to ``image_size`` (bilinear
for 2D, trilinear for 3D).  Volumes larger than a 3D tower's ``image_size`` are not shrunk: MONAI
``sliding_window_inference`` tiles them with windows of the tower's size and averages the window
embeddings (the rule :meth:`CLIPBackbone.encode_volume <framework.backbone.clip.CLIPBackbone.encode_volume>`
follows for slices).  A 2D tower given volumes encodes every axial slice and averages the slice
embeddings, like CLIPBackbone; a 3D tower encodes the volume natively and serves 3D tasks only.

Limits: modality adapters (LoRA, new patch embeddings) reach into an open_clip image tower and are
refused; ``pretrained`` and ``image_size`` of the paradigm belong in the tower's own ``init_args``;
``freeze_image_tower`` freezes the whole tower.  Checkpoints store the ``class_path`` and
``init_args`` (in the hyper-parameters) and the weights: reloading one needs the class importable.

Why one file of over 350 lines: the tower protocol above and :class:`CustomBackbone`, one ``nn.Module``
whose capability checks, input preparation, volume encoding and text side all serve one wrapped tower,
belong together; the ``backbone`` setting's validation is in :mod:`framework.backbone.value`.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from framework.backbone.slices import DEFAULT_SLICE_BATCH_SIZE, over_slices, slice_average
from framework.backbone.value import TOWER_KEYS, check_backbone_value, comparable_backbone, import_class_path  # noqa: F401  (re-exported)

__all__ = ["CustomBackbone", "check_backbone_value", "comparable_backbone", "import_class_path"]

log = logging.getLogger(__name__)


def _per_channel(value: Any, channels: int, field: str, where: str) -> Tensor:
    values = [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else value
    try:
        out = torch.as_tensor([float(v) for v in values], dtype=torch.float32)
    except (TypeError, ValueError):
        out = None
    if out is None or out.numel() not in (1, channels):
        raise ValueError(f"{where}: attribute {field!r} expected a float or {channels} floats (one per channel), found {value!r}")
    return out.expand(channels).clone()


class CustomBackbone(nn.Module):
    """A user's image tower (see the module docstring for its protocol) with the interface of
    :class:`~framework.backbone.CLIPBackbone`: ``prepare_images``, ``encode_image`` (images or volumes),
    ``encode_prompts``, ``forward_intermediates``, ``intermediate_shapes``, ``load_pretrained``.

    Args:
        tower: an ``nn.Module`` following the protocol, or ``{class_path, init_args}`` naming its class.
        freeze_image_tower: freeze every parameter of the tower.
        load_weights: call the tower's ``load_pretrained`` now (paradigms defer it to ``setup``).

    Raises:
        ValueError: for a class that cannot be imported or built, or a tower that breaks the
            protocol (the message names the attribute, what was expected and what was found).

    Example::

        backbone = CustomBackbone({"class_path": "framework.backbone.towers.MonaiViT3D"})
        emb = backbone.encode_image(torch.randint(0, 255, (2, 1, 28, 28, 28), dtype=torch.uint8))  # (2, 128)
    """

    #: no open_clip model: no modality adapters, nothing to store as an architecture
    architecture = None

    def __init__(self, tower: Union[nn.Module, Mapping[str, Any]], freeze_image_tower: bool = False, load_weights: bool = True) -> None:
        super().__init__()
        if isinstance(tower, nn.Module):
            self.class_path = f"{type(tower).__module__}.{type(tower).__qualname__}"
        else:
            config = check_backbone_value(tower, "CustomBackbone")
            if isinstance(config, str):
                raise ValueError(f"CustomBackbone: tower expected an nn.Module or {{class_path, init_args}}, found {tower!r}")
            self.class_path = config["class_path"]
            cls = import_class_path(self.class_path)
            if not isinstance(cls, type) or not issubclass(cls, nn.Module):
                raise ValueError(f"backbone: class_path {self.class_path!r} expected an nn.Module subclass, found {cls!r}")
            try:
                tower = cls(**config["init_args"])
            except TypeError as err:
                raise ValueError(f"backbone: class_path {self.class_path!r}: invalid init_args {config['init_args']}: {err}") from None
        self.tower = tower
        where = f"custom tower {self.class_path!r}"
        self.spatial_dims = self._int_attribute("spatial_dims", where)
        if self.spatial_dims not in (2, 3):
            raise ValueError(f"{where}: attribute 'spatial_dims' expected 2 or 3, found {self.spatial_dims!r}")
        self.embed_dim: int = self._int_attribute("embed_dim", where)
        self.in_channels: int = self._int_attribute("in_channels", where)
        #: a 2D tower's slices per micro-batch on volumes, and whether each is recomputed in backward (framework/backbone/slices.py)
        self.slice_batch_size: int = DEFAULT_SLICE_BATCH_SIZE
        self.checkpoint_slices: bool = False
        size = getattr(tower, "image_size", None)
        size = (size,) * self.spatial_dims if isinstance(size, int) and not isinstance(size, bool) else size
        if not isinstance(size, (tuple, list)) or len(size) != self.spatial_dims or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in size
        ):
            dims = "(H, W)" if self.spatial_dims == 2 else "(D, H, W)"
            raise ValueError(f"{where}: attribute 'image_size' expected {dims}, positive integers, found {size!r}")
        self.image_size: Tuple[int, ...] = tuple(size)
        if not callable(getattr(tower, "forward", None)) or type(tower).forward is nn.Module.forward:
            raise ValueError(f"{where}: expected a forward(x) -> (B, embed_dim) method, found none")
        mean, std = (getattr(tower, name, None) for name in ("image_mean", "image_std"))
        mean = _per_channel(0.5 if mean is None else mean, self.in_channels, "image_mean", where)
        std = _per_channel(0.5 if std is None else std, self.in_channels, "image_std", where)
        if not bool((std > 0).all()):
            raise ValueError(f"{where}: attribute 'image_std' expected positive values, found {std.tolist()}")
        shape = (1, -1) + (1,) * self.spatial_dims
        self.register_buffer("pixel_mean", mean.view(shape), persistent=False)
        self.register_buffer("pixel_std", std.view(shape), persistent=False)
        self.freeze_image_tower = bool(freeze_image_tower)
        if self.freeze_image_tower:
            tower.requires_grad_(False)
        #: modality adapters need an open_clip tower; a custom one has no patch embedding of its own
        self.extra_channels: Optional[int] = None
        if load_weights:
            self.load_pretrained()

    def _int_attribute(self, name: str, where: str) -> int:
        value = getattr(self.tower, name, None)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            found = "no such attribute" if not hasattr(self.tower, name) else repr(value)
            raise ValueError(f"{where}: attribute {name!r} expected a positive integer, found {found}")
        return value

    # ------------------------------------------------------------------ capabilities
    @property
    def has_text(self) -> bool:
        """Whether the tower has a text side (``encode_text``)."""
        return callable(getattr(self.tower, "encode_text", None))

    @property
    def has_intermediates(self) -> bool:
        """Whether the tower serves dense heads (``forward_intermediates``, 2D towers)."""
        return self.spatial_dims == 2 and callable(getattr(self.tower, "forward_intermediates", None))

    def check_task(self, spec: Any, adapter: Any = "auto") -> None:
        """Refuse a task this tower cannot serve, before its head is built.

        Raises:
            ValueError: for an adapter, a 2D task on a 3D tower, a channel count the tower cannot
                take, or a segmentation task the tower has no feature maps for.
        """
        where = f"task '{spec.name}'"
        tower = f"the custom tower {self.class_path!r}"
        if adapter not in ("auto", None):
            raise ValueError(
                f"{where}: modality adapters (LoRA, a new patch embedding) need an open_clip backbone; {tower} takes none, found {adapter!r}"
            )
        if spec.spatial_dims == 2 and self.spatial_dims == 3:
            raise ValueError(f"{where}: spatial_dims=2, but {tower} is 3D (spatial_dims=3) and serves volumes only")
        if spec.in_channels not in (1, self.in_channels):
            raise ValueError(
                f"{where}: in_channels={spec.in_channels}, but {tower} takes {self.in_channels} channel(s) (or 1, repeated); "
                f"modality adapters for other channel counts need an open_clip backbone"
            )
        if spec.kind == "segmentation":
            if not self.has_intermediates:
                raise ValueError(
                    f"{where}: segmentation needs feature maps from forward_intermediates(x, indices) of a 2D tower; {tower} "
                    f"(spatial_dims={self.spatial_dims}) has none"
                )
            skip = spec.in_channels if spec.in_channels not in (1, 3) else 3
            if self.in_channels != skip:
                raise ValueError(
                    f"{where}: the segmentation decoder's image skip takes {skip} channels, but {tower} prepares "
                    f"{self.in_channels}; use a tower with in_channels={skip}"
                )

    # ------------------------------------------------------------------ weights
    def load_pretrained(self) -> Optional[str]:
        """The tower's ``load_pretrained()`` if it has one (called when a run starts, never on a checkpoint restore).

        Returns:
            what it loaded (as the tower says), or ``None``.

        Raises:
            ValueError: if the loaded weights hold non-finite values.
        """
        load = getattr(self.tower, "load_pretrained", None)
        if not callable(load):
            return None
        source = load()
        if source is None:
            return None
        from framework.core.divergence import check_state_dict

        check_state_dict(self.tower.state_dict(), f"pretrained weights of {self.class_path!r} ({source})")
        log.info("CustomBackbone %s: pretrained weights loaded from %s", self.class_path, source)
        return str(source)

    # ------------------------------------------------------------------ image side
    @property
    def current_size(self) -> Tuple[int, ...]:
        """The size the tower runs at: always its own :attr:`image_size` (inputs are resized to it)."""
        return self.image_size

    @contextlib.contextmanager
    def input_size(self, size: Optional[Sequence[int]]) -> Iterator[None]:
        """CLIPBackbone's per-task input size; a custom tower runs at its own ``image_size`` whatever
        the task's size (inputs are resized to it), so this changes nothing."""
        yield

    def prepare_images(self, images: Tensor) -> Tensor:
        """Scale, expand channels, resize to :attr:`image_size` and normalise for the tower.

        ``images`` are ``(B, C, H, W)`` for a 2D tower or ``(B, C, D, H, W)`` for a 3D one, uint8
        (``v`` means ``v / 255``) or float in ``[0, 1]``.

        Raises:
            ValueError: on a wrong rank or channel count.
        """
        rank = 2 + self.spatial_dims
        if images.ndim != rank:
            dims = "(B, C, H, W)" if self.spatial_dims == 2 else "(B, C, D, H, W)"
            raise ValueError(f"CustomBackbone {self.class_path!r}: images expected shape {dims}, found {tuple(images.shape)}")
        if images.dtype == torch.uint8:
            images = images.to(self.pixel_mean.dtype).div_(255.0)
        channels = images.shape[1]
        if channels != self.in_channels:
            if channels != 1:
                raise ValueError(
                    f"CustomBackbone {self.class_path!r}: images expected {self.in_channels} channel(s) (or 1, repeated), found {channels}"
                )
            images = images.expand(-1, self.in_channels, *images.shape[2:])
        if tuple(images.shape[2:]) != self.image_size:
            mode = "bilinear" if self.spatial_dims == 2 else "trilinear"
            images = F.interpolate(images, size=self.image_size, mode=mode, align_corners=False)
        return (images - self.pixel_mean) / self.pixel_std

    def _embed(self, prepared: Tensor) -> Tensor:
        out = self.tower(prepared)
        if not isinstance(out, Tensor) or out.shape != (prepared.shape[0], self.embed_dim):
            found = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"custom tower {self.class_path!r}: forward expected to return (B, embed_dim) = ({prepared.shape[0]}, {self.embed_dim}), found {found}"
            )
        return out

    def encode_image(self, images: Tensor, normalize: bool = True) -> Tensor:
        """Pooled embedding ``(B, embed_dim)``, L2-normalised by default.

        ``images`` are ``(B, C, H, W)`` (2D towers) or ``(B, C, D, H, W)`` volumes: a 3D tower
        encodes them whole (tiling volumes larger than its ``image_size``), a 2D tower slice by slice.

        Raises:
            ValueError: for a rank the tower cannot read.
        """
        if images.ndim == 5 and self.spatial_dims == 2:
            pooled = self._encode_slice_average(images)
        elif images.ndim == 5:
            pooled = self._encode_volume(images)
        elif images.ndim == 4 and self.spatial_dims == 2:
            pooled = self._embed(self.prepare_images(images))
        else:
            expected = "(B, C, H, W) images or (B, C, D, H, W) volumes" if self.spatial_dims == 2 else "(B, C, D, H, W) volumes (a 3D tower)"
            raise ValueError(f"CustomBackbone {self.class_path!r}: expected {expected}, found shape {tuple(images.shape)}")
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def _to_float(self, volumes: Tensor) -> Tensor:
        # MONAI accumulates windows in the input's dtype
        return volumes.to(self.pixel_mean.dtype).div_(255.0) if volumes.dtype == torch.uint8 else volumes

    def _encode_volume(self, volumes: Tensor) -> Tensor:
        """A 3D tower's embedding of ``(B, C, D, H, W)`` volumes; larger ones tiled, not shrunk."""
        size = self.image_size
        if all(s <= t for s, t in zip(volumes.shape[2:], size)):
            return self._embed(self.prepare_images(volumes))
        from monai.inferers import sliding_window_inference

        volumes = self._to_float(volumes)
        grown = tuple(max(s, t) for s, t in zip(volumes.shape[2:], size))
        if grown != tuple(volumes.shape[2:]):  # axes shorter than a window are enlarged, never padded with black
            volumes = F.interpolate(volumes, size=grown, mode="trilinear", align_corners=False)
        maps = sliding_window_inference(
            volumes, roi_size=size, sw_batch_size=4, overlap=0.0,
            predictor=lambda window: self._embed(self.prepare_images(window))[..., None, None, None],
        )
        return maps.flatten(2).mean(dim=2)

    def _encode_slices(self, volumes: Tensor) -> Tensor:
        """Per-slice embeddings ``(B, E, D)``, in micro-batches of :attr:`slice_batch_size` slices."""
        embed = lambda slices: self._embed(self.prepare_images(slices))  # noqa: E731
        return over_slices(embed, volumes, self.slice_batch_size, self.checkpoint_slices).transpose(1, 2)

    def _encode_slice_average(self, volumes: Tensor) -> Tensor:
        """A 2D tower's embedding of volumes: slice embeddings averaged (as CLIPBackbone.encode_volume)."""
        h, w = volumes.shape[-2:]
        if h > self.image_size[0] or w > self.image_size[1]:
            volumes = self._to_float(volumes)  # MONAI accumulates windows in the input's dtype
        return slice_average(self._encode_slices, volumes, self.image_size)

    def forward(self, images: Tensor) -> Tensor:
        return self.encode_image(images)

    def forward_intermediates(
        self, images: Tensor, indices: Union[int, Sequence[int], None] = None, prepared: bool = False
    ) -> List[Tensor]:
        """The tower's feature maps ``(B, C_i, H_i, W_i)``, shallow to deep, for dense heads.

        Raises:
            ValueError: if the tower has no ``forward_intermediates`` (or is 3D), or returns something else.
        """
        if not self.has_intermediates:
            raise ValueError(
                f"custom tower {self.class_path!r} (spatial_dims={self.spatial_dims}) has no forward_intermediates(x, indices); "
                f"dense heads (segmentation) need a 2D tower that has one"
            )
        maps = list(self.tower.forward_intermediates(images if prepared else self.prepare_images(images), indices))
        if not maps or not all(isinstance(m, Tensor) and m.ndim == 4 for m in maps):
            found = [tuple(m.shape) if isinstance(m, Tensor) else type(m).__name__ for m in maps]
            raise ValueError(f"custom tower {self.class_path!r}: forward_intermediates expected a list of (B, C, H, W) maps, found {found}")
        return maps

    @torch.no_grad()
    def intermediate_shapes(self, indices: Union[int, Sequence[int], None] = None) -> List[Tuple[int, int, int]]:
        """``(channels, height, width)`` of each :meth:`forward_intermediates` map (one dummy pass in eval mode)."""
        was_training = self.training
        self.eval()
        try:
            probe = torch.zeros(1, self.in_channels, *self.image_size, device=self.pixel_mean.device)
            return [tuple(m.shape[1:]) for m in self.forward_intermediates(probe, indices, prepared=True)]
        finally:
            self.train(was_training)

    # ------------------------------------------------------------------ text side
    def encode_prompts(self, prompts: Sequence[str]) -> Tensor:
        """L2-normalised ``(len(prompts), embed_dim)`` from the tower's ``encode_text`` (computed on every call).

        Raises:
            ValueError: if the tower has no text side, or returns another shape.
        """
        if not self.has_text:
            raise ValueError(
                f"custom tower {self.class_path!r} has no text side (encode_text), so there are no prompt embeddings; "
                f"classification heads learn their class embeddings instead"
            )
        out = self.tower.encode_text(list(prompts))
        if not isinstance(out, Tensor) or out.shape != (len(prompts), self.embed_dim):
            found = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"custom tower {self.class_path!r}: encode_text expected ({len(prompts)}, {self.embed_dim}), found {found}")
        return F.normalize(out.to(self.pixel_mean.device), dim=-1)

    def clear_text_cache(self) -> None:
        """Nothing is cached (CLIPBackbone's interface)."""
