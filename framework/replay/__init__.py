"""Rehearsal storage: a tensor-backed replay buffer, its storage policies (open: :data:`POLICIES`) and herding selection."""
from framework.core.registry import POLICIES
from framework.replay.policies import ClassBalancedPolicy, ReservoirPolicy, StoragePolicy, register_policy
from framework.replay.herding import HerdingPolicy, herding_order
from framework.replay.buffer import BALANCE_MODES, BatchPlan, ReplayBuffer

__all__ = [
    "ReplayBuffer", "BatchPlan", "BALANCE_MODES", "StoragePolicy", "ReservoirPolicy", "ClassBalancedPolicy", "HerdingPolicy",
    "POLICIES", "register_policy", "herding_order",
]
