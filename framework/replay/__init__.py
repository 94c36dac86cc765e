"""Rehearsal storage: a tensor-backed replay buffer, its storage policies and herding selection."""
from framework.replay.herding import herding_order
from framework.replay.policies import POLICIES, ClassBalancedPolicy, HerdingPolicy, ReservoirPolicy, StoragePolicy
from framework.replay.buffer import BALANCE_MODES, BatchPlan, ReplayBuffer

__all__ = [
    "ReplayBuffer", "BatchPlan", "BALANCE_MODES", "StoragePolicy", "ReservoirPolicy", "ClassBalancedPolicy", "HerdingPolicy",
    "POLICIES", "herding_order",
]
