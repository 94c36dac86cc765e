"""Training paradigms of the MedCL paradigm study, sharing one LightningModule base."""
from framework.paradigms.base import MedCLModule
from framework.paradigms.continual import REGULARIZERS, ContinualModule
from framework.paradigms.joint import JointModule
from framework.paradigms.specialized import SpecializedModule

__all__ = ["MedCLModule", "SpecializedModule", "JointModule", "ContinualModule", "REGULARIZERS"]
