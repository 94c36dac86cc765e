"""Lightning callbacks: rehearsal and continual evaluation."""
from framework.callbacks.continual_eval import ContinualEvaluation
from framework.callbacks.replay import ClassBalancedPolicy, ReplayBuffer, ReplayCallback, ReservoirPolicy, StoragePolicy

__all__ = ["ContinualEvaluation", "ReplayCallback", "ReplayBuffer", "StoragePolicy", "ReservoirPolicy", "ClassBalancedPolicy"]
