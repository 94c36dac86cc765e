"""Continual-learning strategies: Lightning callbacks with named hooks (:mod:`framework.strategies.base`).

Combine them as a list of ``class_path`` entries under ``trainer.callbacks``; a user's package adds
its own with ``@register_strategy("name")`` or by ``class_path`` (docs/extending.md).
"""
from framework.core.registry import STRATEGIES
from framework.strategies.base import Batch, ExperienceCallback, Outputs, Strategy, register_strategy
from framework.strategies.freezing import Freezing
from framework.strategies.replay import Replay, ReplayCallback
from framework.strategies.ewc import EWC
from framework.strategies.lwf import LwF, distillable
from framework.strategies.der import DER
from framework.strategies.l2p import L2P
from framework.strategies.regularizer import Regularizer

__all__ = [
    "STRATEGIES", "Strategy", "ExperienceCallback", "register_strategy", "Batch", "Outputs", "Freezing", "Replay", "ReplayCallback", "EWC",
    "LwF", "distillable", "Regularizer", "DER", "L2P",
]
