"""Task heads and their registry.  Importing this package registers the built-in heads."""
from framework.heads.base import TaskHead
from framework.heads.classification import ClassificationHead, MultilabelHead
from framework.heads.registry import HEAD_REGISTRY, build_head, register_head, registered_kinds

__all__ = ["TaskHead", "ClassificationHead", "MultilabelHead", "HEAD_REGISTRY", "build_head", "register_head", "registered_kinds"]
