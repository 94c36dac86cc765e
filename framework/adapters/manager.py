"""ModalityAdapters: the per-modality adapters of one backbone, and the routing between them."""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, List, Optional

from torch import nn

from framework.adapters.lora import inject_lora, lora_layers, lora_parameters, route
from framework.adapters.patch_embedding import RoutedPatchEmbedding, init_from_rgb, install_router
from framework.adapters.spec import AdapterSpec

__all__ = ["ModalityAdapters"]


class ModalityAdapters:
    """Adapters of a :class:`~framework.backbone.CLIPBackbone`, one set per modality.

    The modules live inside the image tower (a :class:`RoutedPatchEmbedding` in place of its first
    convolution, peft LoRA layers in its blocks), so they are part of the backbone's ``state_dict``;
    this object keeps their specs (stored in checkpoints, so adapters are rebuilt before strict
    loading) and routes a forward pass to one modality with :meth:`use`.  A modality without
    adapters runs the tower as it is.

    Args:
        backbone: the backbone to adapt (not registered as a child: the modules are already its own).
    """

    def __init__(self, backbone: nn.Module) -> None:
        self._backbone = [backbone]  # a list keeps nn.Module from registering it twice
        self.specs: Dict[str, AdapterSpec] = {}
        self.modalities: List[str] = []  # every modality the model serves, adapted or not
        self._router: Optional[RoutedPatchEmbedding] = None
        self._layers: List[nn.Module] = []

    @property
    def visual(self) -> nn.Module:
        return self._backbone[0].clip.visual

    def __contains__(self, modality: str) -> bool:
        """Whether ``modality`` has adapters."""
        return modality in self.specs

    def register_modality(self, modality: str) -> None:
        """Record that a task of ``modality`` exists (adapted or not)."""
        if modality not in self.modalities:
            self.modalities.append(modality)

    def add(self, spec: AdapterSpec) -> None:
        """Create ``spec.modality``'s patch embedding and/or LoRA.

        Raises:
            ValueError: if the modality already has adapters.
        """
        if spec.modality in self.specs:
            raise ValueError(f"ModalityAdapters: modality {spec.modality!r} already has adapters {self.specs[spec.modality].to_dict()}")
        if spec.needs_patch_embedding:
            if self._router is None:
                self._router = install_router(self.visual)
            self._router.per_modality[spec.modality] = init_from_rgb(self._router.base, spec.in_channels, spec.channel_init)
        if spec.lora is not None:
            inject_lora(self.visual, spec.modality, spec.lora)
            self._layers = lora_layers(self.visual)
        self.specs[spec.modality] = spec
        self.register_modality(spec.modality)

    def in_channels(self, modality: str) -> Optional[int]:
        """Channels of ``modality``'s own patch embedding (``None``: the tower's 1/3-channel one)."""
        spec = self.specs.get(modality)
        return spec.in_channels if spec is not None and spec.needs_patch_embedding else None

    def parameters(self, modality: str) -> List[nn.Parameter]:
        """Parameters of ``modality``'s adapters (patch embedding first, then LoRA).

        Raises:
            KeyError: if the modality has no adapters.
        """
        self._check(modality, adapted=True)
        params: List[nn.Parameter] = []
        if self._router is not None and modality in self._router.per_modality:
            params.extend(self._router.per_modality[modality].parameters())
        params.extend(lora_parameters(self.visual, modality))
        return params

    def all_parameters(self) -> List[nn.Parameter]:
        """Parameters of every adapter."""
        return [p for modality in self.specs for p in self.parameters(modality)]

    def _check(self, modality: str, adapted: bool = False) -> None:
        known = self.specs if adapted else self.modalities
        if modality not in known:
            what = "has no adapter" if adapted else "is unknown to this model"
            raise KeyError(
                f"modality {modality!r} {what}; adapted modalities: {sorted(self.specs)}, modalities of the model's tasks: {self.modalities}"
            )

    @contextlib.contextmanager
    def use(self, modality: str) -> Iterator[None]:
        """Route the image tower to ``modality``'s adapters for the duration of the block.

        Raises:
            KeyError: if no task of the model has that modality.
        """
        self._check(modality)
        self._activate(modality)
        try:
            yield
        finally:
            self._activate(None)

    def _activate(self, modality: Optional[str]) -> None:
        if self._router is not None:
            self._router.active = modality
        if self._layers:
            route(self._layers, modality)
        self._backbone[0].extra_channels = self.in_channels(modality) if modality is not None else None
