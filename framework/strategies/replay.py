"""Rehearsal as a strategy: stored exemplars of earlier tasks are mixed into every training batch.

Storage policy (which samples to keep, :mod:`framework.replay`) is separated from the replay
mechanism (how they are mixed into batches), as in Avalanche.  The strategy offers every training
batch to the buffer and returns the batch with keys for earlier tasks added (``before_forward``).
A policy may also act when an experience ends (``after_experience``): herding fills the buffer from
backbone features of the experience's training data (iCaRL).
"""
from __future__ import annotations

import math
import zlib
from typing import Any, Dict, List, Mapping, MutableMapping, Optional, Tuple, Union

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor
from torch.utils.data import DataLoader, Subset

from framework.core.data_protocol import domain_for
from framework.core.registry import POLICIES
from framework.distributed import rank_and_world_size
from framework.metrics.evaluation import extract_features
from framework.replay import BALANCE_MODES, ReplayBuffer, StoragePolicy
from framework.strategies.base import Batch, Strategy, register_strategy

__all__ = ["Replay", "ReplayCallback"]


@register_strategy("replay")
class Replay(Strategy):
    """Rehearsal for continual learning (paradigm d).

    Before each training step, exemplars of tasks *not* in the current batch are drawn from the
    buffer, the current batch is offered to the buffer, and the drawn exemplars are added to the
    batch dict under their task keys (on the batch's device, in their stored dtype), so the shared
    ``training_step`` also computes their losses.  The buffer travels in the checkpoint.

    With ``policy="herding"`` nothing is stored during an experience; at its end the policy has
    the strategy encode the experience's training data with the task's backbone (``encode_image(...,
    normalize=True)``, eval mode, no gradients) and the policy keeps the herding-ordered exemplars
    of every class.  When a task's training set is larger than ``herding_candidates``, a random
    subset of that size is encoded: the first ``herding_candidates`` indices of a permutation drawn
    from a generator seeded with ``seed``, the experience and the task name (the same on every rank).

    In multi-GPU (DDP) runs every rank fills its own buffer from its data shard; a checkpoint holds
    every rank's buffer and each rank restores its own (resuming needs the same world size).

    Args:
        capacity: buffer budget in samples (all tasks together); or
        max_mb: buffer budget in megabytes of stored image + target data (set ``capacity: null``).
        policy: a registered storage policy (``"reservoir"``, ``"class_balanced"``, ``"herding"``, or a
            user's, see :data:`~framework.core.registry.POLICIES`), a ``class_path``, or a
            :class:`~framework.replay.policies.StoragePolicy` instance (``{class_path: ..., init_args: ...}`` in YAML).
        replay_batch_size: exemplars mixed into each training batch; or
        replay_ratio: exemplars per current sample (0.5: half the current batch size; set
            ``replay_batch_size: null``).
        balance: ``"uniform"`` (every stored sample of an old task equally likely) or ``"task"``
            (old tasks get equal shares of each replay batch).
        max_tasks_per_step: replay from at most this many old tasks per step, chosen at random
            each step (default ``None``: all of them).  Every task in a batch costs one more
            forward/backward pass, so without a cap a step slows down as the stream grows
            (``benchmarks/results/scaling.md``).
        task_quota: optional maximum samples per named task.
        herding_candidates: most training samples per task encoded for herding.
        seed: seed of the buffer's generator and of the herding subset.

    Raises:
        ValueError: naming the argument, the expectation and what was found, on an invalid value
            or on both or neither of ``capacity``/``max_mb`` or ``replay_batch_size``/``replay_ratio``.
    """

    def __init__(
        self,
        capacity: Optional[int] = 500,
        max_mb: Optional[float] = None,
        policy: Union[str, StoragePolicy] = "reservoir",
        replay_batch_size: Optional[int] = 32,
        replay_ratio: Optional[float] = None,
        balance: str = "uniform",
        max_tasks_per_step: Optional[int] = None,
        task_quota: Optional[Dict[str, int]] = None,
        herding_candidates: int = 2000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        name = "Replay"
        if (capacity is None) == (max_mb is None):
            raise ValueError(
                f"{name}: expected exactly one budget, capacity (samples) or max_mb (megabytes; set capacity: null), "
                f"found capacity={capacity!r}, max_mb={max_mb!r}"
            )
        if isinstance(policy, str):
            policy = POLICIES.get(policy, where=f"{name}: policy")()
        if not isinstance(policy, StoragePolicy):
            raise ValueError(f"{name}: policy expected a registered policy name {POLICIES.names()}, a class_path or a StoragePolicy, found {policy!r}")
        if (replay_batch_size is None) == (replay_ratio is None):
            raise ValueError(
                f"{name}: expected exactly one of replay_batch_size and replay_ratio (set replay_batch_size: null to use a ratio), "
                f"found replay_batch_size={replay_batch_size!r}, replay_ratio={replay_ratio!r}"
            )
        if replay_batch_size is not None and (isinstance(replay_batch_size, bool) or not isinstance(replay_batch_size, int) or replay_batch_size < 0):
            raise ValueError(f"{name}: replay_batch_size expected an integer >= 0, found {replay_batch_size!r}")
        if replay_ratio is not None and (
            isinstance(replay_ratio, bool) or not isinstance(replay_ratio, (int, float)) or not math.isfinite(replay_ratio) or replay_ratio < 0
        ):
            raise ValueError(f"{name}: replay_ratio expected a finite number >= 0 (exemplars per current sample), found {replay_ratio!r}")
        if balance not in BALANCE_MODES:
            raise ValueError(f"{name}: balance expected one of {list(BALANCE_MODES)}, found {balance!r}")
        if max_tasks_per_step is not None and (isinstance(max_tasks_per_step, bool) or not isinstance(max_tasks_per_step, int) or max_tasks_per_step < 1):
            raise ValueError(f"{name}: max_tasks_per_step expected a positive integer or null, found {max_tasks_per_step!r}")
        if isinstance(herding_candidates, bool) or not isinstance(herding_candidates, int) or herding_candidates < 1:
            raise ValueError(f"{name}: herding_candidates expected a positive integer, found {herding_candidates!r}")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"{name}: seed expected an integer, found {seed!r}")
        ReplayBuffer.check_task_quota(task_quota, name)
        try:
            self.buffer = ReplayBuffer(capacity, policy, seed=seed, max_mb=max_mb, task_quota=task_quota)
        except ValueError as err:
            raise ValueError(str(err).replace("ReplayBuffer:", f"{name}:", 1)) from None
        self.policy_name = policy.name
        self.replay_batch_size = replay_batch_size
        self.replay_ratio = None if replay_ratio is None else float(replay_ratio)
        self.balance = balance
        self.max_tasks_per_step = max_tasks_per_step
        self.herding_candidates = herding_candidates
        self.seed = seed
        self._loading_for: Optional[str] = None  # the trainer function a checkpoint is being loaded for (on_load_checkpoint)

    @property
    def state_key(self) -> str:
        # Fixed key (the strategy's name before it was one; checkpoints keep it): resuming with another
        # capacity or policy must fail loudly in load_state_dict, not silently start from an empty buffer under a new key.
        return "ReplayCallback"

    def replay_size(self, current: int) -> int:
        """Exemplars to draw for a batch of ``current`` samples."""
        if self.replay_ratio is not None:
            return int(math.floor(self.replay_ratio * current + 0.5))
        return self.replay_batch_size

    # ------------------------------------------------------------------ training
    def before_forward(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch) -> Batch:
        """Draw exemplars of the tasks not in the batch, offer the batch to the buffer, and return the
        batch with the exemplars added under their task keys (on the batch's device, in their stored dtype)."""
        if not isinstance(batch, MutableMapping):
            raise TypeError(f"Replay expects dict batches keyed by task, found {type(batch).__name__}")
        if not batch:
            return batch
        current = tuple(batch.keys())
        size = sum(len(sub["target"]) for sub in batch.values())
        replay = self.buffer.sample(self.replay_size(size), exclude=current, balance=self.balance, max_tasks=self.max_tasks_per_step)
        for task, sub in list(batch.items()):
            self.buffer.add_batch(task, sub["image"], sub["target"])
        if not replay:
            return batch
        device = next(iter(batch.values()))["image"].device
        out = dict(batch)
        for task, sub in replay.items():
            out[task] = {k: v.to(device, non_blocking=True) for k, v in sub.items()}
        return out

    def after_experience(self, trainer: pl.Trainer, module: pl.LightningModule, experience: int, tasks: List[str]) -> None:
        """The policy's turn (herding selects its exemplars here), then a summary line."""
        self.buffer.policy.after_experience(self.buffer, list(tasks), lambda task: self.featurise(trainer, module, experience, task))
        if getattr(trainer, "is_global_zero", True):
            rank_zero_info(
                f"replay buffer after experience {experience} ({self.policy_name}): {len(self.buffer)}/{self.buffer.capacity} samples "
                f"{self.buffer.counts()}, {self.buffer.nbytes() / 2**20:.2f} MiB stored, {self.buffer.allocated_bytes() / 2**20:.2f} MiB allocated"
            )

    def candidate_loader(self, trainer: pl.Trainer, experience: int, task: str) -> DataLoader:
        """The (unshuffled) training loader of ``task``, restricted to ``herding_candidates`` samples.

        Raises:
            ValueError: if the trainer's datamodule cannot serve ``task``'s training data.
        """
        domain = domain_for(getattr(trainer, "datamodule", None), task, f"Replay(policy={self.policy_name!r}): encoding exemplars")
        loader = domain.loader("train", keyed=False, shuffle=False)
        n = len(loader.dataset)
        if n <= self.herding_candidates:
            return loader
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + experience * 7919 + zlib.crc32(task.encode()))
        index = torch.randperm(n, generator=generator)[: self.herding_candidates].sort().values.tolist()
        return DataLoader(
            Subset(loader.dataset, index), batch_size=loader.batch_size, shuffle=False, num_workers=loader.num_workers,
            collate_fn=loader.collate_fn, generator=loader.generator,
        )

    def featurise(self, trainer: pl.Trainer, pl_module: pl.LightningModule, experience: int, task: str) -> Tuple[Tensor, Tensor, Tensor]:
        """``(images, targets, features)`` of ``task``'s herding candidates (CPU; images in their dtype).

        Features are ``model_for(task).backbone.encode_image(images, normalize=True)`` through the
        task's modality adapters, in eval mode without gradients (the training mode is restored).
        """
        batches = self.candidate_loader(trainer, experience, task)
        if getattr(trainer, "progress_bar_callback", None) is not None and getattr(trainer, "is_global_zero", True):
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc=f"herding {task}", leave=False)
        was_training = pl_module.training
        pl_module.eval()
        try:
            features, targets, images = extract_features(
                pl_module.model_for(task), pl_module.task_specs[task], batches, pl_module.device, keep_images=True
            )
        finally:
            pl_module.train(was_training)
        return images, targets, features

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        """``{"world_size": W, "ranks": [buffer state of rank 0, ..., rank W-1]}``.

        Lightning calls this on every rank but writes rank 0's result, so with several processes
        every rank's buffer is gathered here (a collective call: every rank takes part).
        """
        mine = self.buffer.state_dict()
        _, world_size = rank_and_world_size()
        if world_size > 1:
            ranks: List[Any] = [None] * world_size
            torch.distributed.all_gather_object(ranks, mine)
        else:
            ranks = [mine]
        return {"world_size": world_size, "ranks": ranks, "policy": self.policy_name}

    def on_load_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule, checkpoint: Dict[str, Any]) -> None:
        # Lightning calls this just before load_state_dict: remember what the checkpoint is loaded for
        state = getattr(trainer, "state", None)
        fn = getattr(state, "fn", None)
        self._loading_for = None if fn is None else str(getattr(fn, "value", fn))

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore this rank's buffer.

        A checkpoint shared without its exemplars (``medcl-share``, :mod:`framework.sharing`) has no
        buffer to restore: ``validate``/``test``/``predict`` go on with an empty buffer (they never
        replay), resuming ``fit`` is refused.

        Raises:
            ValueError: on a checkpoint shared without its replay exemplars (when fitting, or when
                called outside a trainer), a checkpoint written by an older MedCL, a different world
                size, or a buffer whose policy or budget differs (see :meth:`ReplayBuffer.load_state_dict`).
        """
        loading_for, self._loading_for = getattr(self, "_loading_for", None), None
        if state_dict.get("stripped"):
            if loading_for not in (None, "fit"):
                rank_zero_info(f"Replay: the checkpoint was shared without its replay exemplars; {loading_for} does not need them")
                return
            raise ValueError(
                f"Replay: the checkpoint was shared without its replay exemplars (medcl-share removed "
                f"{state_dict.get('removed_samples', 'its')} stored samples), so it cannot resume a replay run; resume from the "
                f"original checkpoint, or start a new run from this one with --model.init_args.init_from <this checkpoint>"
            )
        if "buffer" in state_dict or "ranks" not in state_dict:
            raise ValueError(
                "Replay: the checkpoint's replay buffer format is from an older MedCL (expected 'world_size' and 'ranks' "
                f"entries, found {sorted(state_dict)}); it cannot be resumed with this version: start a new run "
                "(init_from loads the model weights without the buffer)"
            )
        rank, world_size = rank_and_world_size()
        stored = state_dict.get("world_size")
        if stored != world_size or len(state_dict["ranks"]) != world_size:
            raise ValueError(
                f"Replay: checkpoint field 'world_size' is {stored}, this run has world_size {world_size}; every rank keeps "
                f"its own replay buffer, so resume with {stored} processes"
            )
        self.buffer.load_state_dict(state_dict["ranks"][rank])


#: the strategy's former name, kept for configs and code that use it
ReplayCallback = Replay
