"""Per-modality LoRA on the image tower, with peft.

Each modality's LoRA is one named peft adapter injected into the image tower
(``peft.inject_adapter_in_model``).  Routing is per forward pass: :func:`route` activates one
modality's adapter, or none, with the tuner layers' public ``set_adapter``/``enable_adapters``.
Those also flip ``requires_grad`` of every adapter, which would undo MedCL's freezing policy
between steps, so :func:`route` puts the flags back as they were.

peft API used: ``LoraConfig``, ``inject_adapter_in_model``, ``BaseTunerLayer`` (documented) and
``peft.tuners.tuners_utils.check_target_module_exists`` (public name, undocumented: peft is pinned
in constraints.txt and tests/test_private_apis.py checks its signature).
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Union

from torch import nn

__all__ = ["default_target_modules", "inject_lora", "lora_layers", "lora_parameters", "route"]

#: peft target modules per tower family: the MLP of every ViT block, the 3x3 convolutions of every
#: ResNet block.  Not the ViT's attention: open_clip uses torch's ``nn.MultiheadAttention``, whose
#: weights peft can only adapt by merging LoRA into them on every forward pass and unmerging after,
#: which replaces the base Parameter objects (stale optimizer references, ``requires_grad`` reset,
#: round-off drift in frozen weights).  :func:`inject_lora` refuses such targets.
VIT_TARGETS = ["c_fc", "c_proj"]
RESNET_TARGETS = r".*layer\d+\.\d+\.conv[12]"


def default_target_modules(visual: nn.Module) -> Union[str, List[str]]:
    """LoRA targets for an open_clip image tower: ViT blocks or timm ResNet blocks.

    Raises:
        ValueError: for a tower of another kind (pass ``lora.target_modules`` explicitly then).
    """
    names = [name for name, _ in visual.named_modules()]
    if any(name.endswith("mlp.c_fc") for name in names):
        return list(VIT_TARGETS)
    if any(".layer1.0.conv1" in name or name.startswith("layer1.0.conv1") for name in names):
        return RESNET_TARGETS
    raise ValueError(
        f"LoRA: no default target modules for an image tower of type {type(visual).__name__}; "
        f"set model lora.target_modules (peft LoraConfig target_modules) to the module names to adapt"
    )


def inject_lora(visual: nn.Module, modality: str, options: Dict[str, Any]) -> None:
    """Inject one modality's LoRA adapter (``B`` starts at zero, so the tower is unchanged).

    The new adapter is left inactive; :func:`route` turns it on.
    """
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import check_target_module_exists

    config = LoraConfig(
        r=options["r"], lora_alpha=options["alpha"], lora_dropout=options["dropout"],
        target_modules=options["target_modules"] or default_target_modules(visual),
    )
    attention = [name for name, m in visual.named_modules() if isinstance(m, nn.MultiheadAttention) and check_target_module_exists(config, name)]
    if attention:
        raise ValueError(
            f"LoRA for modality {modality!r}: lora.target_modules matches nn.MultiheadAttention module(s) {attention[:3]}, which "
            f"peft adapts by merging into the frozen weights on every forward pass; target Linear/Conv2d modules instead "
            f"(default for ViTs: {VIT_TARGETS})"
        )
    # peft freezes the whole tower on the first injection (and flips other adapters' flags): MedCL's
    # freezing policy owns requires_grad, so the tower's flags are put back and the new adapter trains.
    before = {id(p): p.requires_grad for p in visual.parameters()}
    inject_adapter_in_model(config, visual, adapter_name=modality)
    for p in visual.parameters():
        p.requires_grad_(before.get(id(p), True))
    route(lora_layers(visual), None)


def lora_layers(visual: nn.Module) -> List[nn.Module]:
    """peft tuner layers of the tower."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    return [m for m in visual.modules() if isinstance(m, BaseTunerLayer)]


def route(layers: List[nn.Module], modality: Optional[str]) -> None:
    """Activate ``modality``'s LoRA in every tuner layer (of :func:`lora_layers`) that has it; disable
    the others.  No ``requires_grad`` flag changes (the freezing policy owns them)."""
    for layer in layers:
        has = modality is not None and modality in layer.lora_A
        flags = [(p, p.requires_grad) for p in layer.parameters()]
        layer.set_adapter([modality] if has else [])
        layer.enable_adapters(has)
        for p, requires_grad in flags:
            p.requires_grad_(requires_grad)


def lora_parameters(visual: nn.Module, modality: str) -> List[nn.Parameter]:
    """Parameters of ``modality``'s LoRA adapter, in module order."""
    params = []
    for layer in lora_layers(visual):
        for container in (layer.lora_A, layer.lora_B):
            if modality in container:
                params.extend(container[modality].parameters())
    return params
