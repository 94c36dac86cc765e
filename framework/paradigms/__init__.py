"""Training paradigms of the MedCL paradigm study, sharing one LightningModule base."""
from framework.paradigms.base import MedCLModule
from framework.paradigms.continual import ContinualModule
from framework.paradigms.joint import JointModule
from framework.paradigms.regularizers import EWC, REGULARIZERS, LwF, Regularizer
from framework.paradigms.specialized import SpecializedModule

__all__ = ["MedCLModule", "SpecializedModule", "JointModule", "ContinualModule", "Regularizer", "EWC", "LwF", "REGULARIZERS"]
