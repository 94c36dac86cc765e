"""Lightning callbacks: continual evaluation, experience and stage checkpoints, prediction files, attention kernel choice, WiSE-FT, volume memory, torch.compile."""
from framework.callbacks.attention_kernel import AttentionKernel
from framework.callbacks.compile import CompileModels
from framework.callbacks.continual_eval import ContinualEvaluation
from framework.callbacks.experience_checkpoint import ExperienceCheckpoint
from framework.callbacks.prediction_writer import PredictionWriter
from framework.callbacks.stage_checkpoint import StageCheckpoint
from framework.callbacks.volume_memory import VolumeMemory
from framework.replay import ClassBalancedPolicy, ReplayBuffer, ReservoirPolicy, StoragePolicy
from framework.strategies.replay import ReplayCallback  # the replay strategy's former home and name (framework.strategies.Replay)
from framework.callbacks.wise_ft import WiSEFT

__all__ = [
    "AttentionKernel", "CompileModels", "ContinualEvaluation", "ExperienceCheckpoint", "PredictionWriter", "ReplayCallback", "ReplayBuffer", "StoragePolicy", "ReservoirPolicy",
    "ClassBalancedPolicy", "StageCheckpoint", "VolumeMemory", "WiSEFT",
]
