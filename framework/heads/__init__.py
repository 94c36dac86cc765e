"""Task heads and their registry.  Importing this package registers the built-in heads."""
from framework.heads.base import TaskHead
from framework.heads.classification import ClassificationHead, MultilabelHead
from framework.heads.prognosis import PrognosisHead
from framework.heads.registry import HEAD_REGISTRY, build_head, register_head, registered_kinds
from framework.heads.segmentation import SegmentationHead

__all__ = [
    "TaskHead", "ClassificationHead", "MultilabelHead", "PrognosisHead", "SegmentationHead",
    "HEAD_REGISTRY", "build_head", "register_head", "registered_kinds",
]
