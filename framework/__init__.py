"""MedCL: a CLIP-based medical foundation model that keeps learning new domains without forgetting."""
from framework.backbone import CLIPBackbone
from framework.model import MedCLModel
from framework.specs import TASK_KINDS, TaskSpec

__version__ = "0.1.0"
__all__ = ["CLIPBackbone", "MedCLModel", "TaskSpec", "TASK_KINDS", "__version__"]
