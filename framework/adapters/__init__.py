"""Modality adapters: per-modality LoRA (peft) and patch embeddings for new channel counts."""
from framework.adapters.manager import ModalityAdapters
from framework.adapters.patch_embedding import RoutedPatchEmbedding
from framework.adapters.spec import AdapterSpec, check_lora_options

__all__ = ["AdapterSpec", "ModalityAdapters", "RoutedPatchEmbedding", "check_lora_options"]
