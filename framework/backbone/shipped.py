"""Pretrained weights that ship with MedCL, named by a tag (``pretrained: <tag>``).

Each is a weights file written by ``medcl pretrain`` (see :mod:`framework.backbone.weights_file`)
with a model card (``<file>.json``: the pretraining domains, the command that remakes it and its
zero-shot test accuracy).  A run that starts from one has *seen* its pretraining domains: never
report results on those domains as unseen.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

__all__ = ["SHIPPED_DIR", "ShippedWeights", "SHIPPED", "shipped_tags", "shipped_weights", "model_card"]

SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"


@dataclass(frozen=True)
class ShippedWeights:
    """One shipped weights file: the architecture it fits, its file name and the config that remakes it."""

    architecture: str
    file: str
    config: str

    @property
    def path(self) -> Path:
        return SHIPPED_DIR / self.file


#: tag -> shipped weights
SHIPPED: Dict[str, ShippedWeights] = {
    "medmnist-blood-organa": ShippedWeights(
        architecture="medcl-vit-tiny-minilm",
        file="medcl-vit-tiny-minilm_medmnist-blood-organa.safetensors",
        config="experiments/pretrain/medcl_vit_tiny_minilm_blood_organa.yaml",
    ),
}


def shipped_tags(architecture: str) -> Tuple[str, ...]:
    """The shipped tags of ``architecture``."""
    return tuple(tag for tag, entry in SHIPPED.items() if entry.architecture == architecture)


def shipped_weights(architecture: str, tag: str) -> Optional[str]:
    """The file of shipped tag ``tag`` for ``architecture``, or ``None`` if it is not a shipped tag.

    Raises:
        ValueError: if ``tag`` is shipped for another architecture.
        FileNotFoundError: if the file is missing from this installation (naming the command that remakes it).
    """
    entry = SHIPPED.get(tag)
    if entry is None:
        return None
    if entry.architecture != architecture:
        raise ValueError(f"CLIPBackbone: pretrained={tag!r} is MedCL's shipped model for backbone {entry.architecture!r}, not {architecture!r}")
    if not entry.path.is_file():
        raise FileNotFoundError(
            f"CLIPBackbone: the shipped weights of {tag!r} are missing: {entry.path}; remake them with "
            f"`medcl pretrain --config {entry.config}` and pass the written file as pretrained"
        )
    return str(entry.path)


def model_card(tag: str) -> Dict[str, Any]:
    """The model card of shipped tag ``tag`` (pretraining domains, command, zero-shot accuracy).

    Raises:
        KeyError: for an unknown tag.
    """
    entry = SHIPPED[tag]
    return json.loads(entry.path.with_suffix(".json").read_text())
