"""Image–text backbones (open_clip) and their architecture registry."""
from framework.backbone.clip import MODEL_CONFIG_DIR, CLIPBackbone, list_architectures, register_model_configs

__all__ = ["CLIPBackbone", "MODEL_CONFIG_DIR", "list_architectures", "register_model_configs"]
