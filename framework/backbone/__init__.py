"""Image–text backbones (open_clip) and their architecture registry; a user's own image tower by class_path."""
from framework.backbone.clip import MODEL_CONFIG_DIR, CLIPBackbone, list_architectures, register_model_configs
from framework.backbone.custom import CustomBackbone

__all__ = ["CLIPBackbone", "CustomBackbone", "MODEL_CONFIG_DIR", "list_architectures", "register_model_configs"]
