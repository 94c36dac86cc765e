"""Where this process stands in a multi-process (DDP) run."""
from __future__ import annotations

from typing import Tuple

import torch

__all__ = ["rank_and_world_size"]


def rank_and_world_size() -> Tuple[int, int]:
    """``(rank, world_size)`` of the default ``torch.distributed`` process group, ``(0, 1)`` without one.

    Read from the process group rather than the trainer, so code outside the Lightning loops (the
    replay buffer's checkpoint state, the experience-end evaluation) can ask too.
    """
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1
