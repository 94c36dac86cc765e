"""L2P — Learning to Prompt (Wang et al., CVPR 2022, "Learning to Prompt for Continual Learning").

A frozen pretrained ViT is steered by a shared pool of learnable prompts.  Every prompt has a key;
an image's query is the frozen tower's class-token feature of the image without prompts; the
``top_k`` prompts whose keys are most similar (cosine) to the query are inserted after the class
token of the tower's token sequence (:meth:`~framework.strategies.Strategy.tokens`), so the blocks
read them.  A surrogate loss ``key_weight * (1 - cos(query, key))`` over the chosen keys pulls keys
towards the queries that chose them.  Prompts, keys and the heads train; the tower does not.

Differences from the paper, on purpose: the heads pool the class token (open_clip's pooling), not
the mean of the prompt tokens; no batch-wise prompt frequency penalty; the prompt tokens are removed
again after the blocks, so every MedCL head reads the sequence it expects.  Dense heads
(segmentation), which read intermediate blocks directly, are refused.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from framework.backbone.tokens import supports_token_hooks
from framework.strategies.base import Batch, Outputs, Strategy, register_strategy
from framework.strategies.regularizer import number

__all__ = ["L2P", "PromptPool"]

#: freezing policies that keep the image tower's own weights frozen
_TOWER_FROZEN_POLICIES = ("backbone", "backbone+old_heads", "adapters_only")


def _positive(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"L2P: {name} expected a positive integer, found {value!r}")
    return value


class PromptPool(nn.Module):
    """``pool_size`` prompts of ``length`` tokens of width ``width``, each with a key, initialised
    uniformly in [-1, 1] from a generator seeded with ``seed`` (as the reference implementation)."""

    def __init__(self, pool_size: int, length: int, width: int, seed: int) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.prompts = nn.Parameter(torch.rand(pool_size, length, width, generator=generator) * 2 - 1)
        self.keys = nn.Parameter(torch.rand(pool_size, width, generator=generator) * 2 - 1)


@register_strategy("l2p")
class L2P(Strategy):
    """Learning to Prompt on a frozen ViT image tower (see the module docstring).

    Args:
        pool_size: prompts in the pool (M; the paper uses 10).
        prompt_length: tokens per prompt (L_p; the paper uses 5).
        top_k: prompts chosen per image (N; the paper uses 5).
        key_weight: weight of the key-query surrogate loss (logged as ``train/l2p_keys``).
        seed: seed of the prompts' and keys' initialisation.

    Raises:
        ValueError: on invalid options (``top_k`` > ``pool_size``), and at ``fit`` for a tower that is
            not an open_clip ViT, a tower that trains, a paradigm with one model per task, or a
            segmentation task.
    """

    def __init__(self, pool_size: int = 10, prompt_length: int = 5, top_k: int = 5, key_weight: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        self.pool_size = _positive("pool_size", pool_size)
        self.prompt_length = _positive("prompt_length", prompt_length)
        self.top_k = _positive("top_k", top_k)
        if top_k > pool_size:
            raise ValueError(f"L2P: top_k expected at most pool_size ({pool_size}), found {top_k}")
        self.key_weight = number("L2P: key_weight", key_weight, 0.0, strict=False)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"L2P: seed expected an integer, found {seed!r}")
        self.seed = seed
        self.pool: Optional[PromptPool] = None
        self._pull: List[Tensor] = []
        #: prompt index -> how often it was chosen in training (for the logs and docs)
        self.usage: Optional[Tensor] = None

    def describe(self) -> str:
        return f"L2P(pool_size={self.pool_size}, prompt_length={self.prompt_length}, top_k={self.top_k}, key_weight={self.key_weight})"

    @staticmethod
    def _tower(module: pl.LightningModule) -> nn.Module:
        models = module.all_models()
        if len(models) != 1:
            raise ValueError(f"L2P: one prompt pool serves one shared model (ContinualModule, JointModule); {type(module).__name__} has {len(models)}")
        return models[0].image_tower

    # ------------------------------------------------------------------ setup
    def trainable_module(self, module: pl.LightningModule) -> Optional[nn.Module]:
        if self.pool is None:
            tower = self._tower(module)
            if not supports_token_hooks(tower):
                raise ValueError(f"L2P: prompts need a ViT image tower (open_clip VisionTransformer); the backbone {module.hparams.backbone!r} has {type(tower).__name__}")
            self.pool = PromptPool(self.pool_size, self.prompt_length, int(tower.class_embedding.shape[-1]), self.seed)
            self.usage = torch.zeros(self.pool_size, dtype=torch.long)
        return self.pool

    def check_module(self, module: pl.LightningModule) -> None:
        frozen = module.hparams.get("freeze_image_tower") or module.freezing.policy in _TOWER_FROZEN_POLICIES
        if not frozen:
            raise ValueError(
                "L2P: the image tower must stay frozen (its class token is the query that chooses prompts); set "
                "model.init_args.freeze_image_tower: true (or freeze: backbone)"
            )
        dense = [name for name, spec in {**module.stream_specs, **module.task_specs}.items() if spec.kind == "segmentation"]
        if dense:
            raise ValueError(f"L2P: segmentation heads read the tower's intermediate blocks, where prompts would change the patch grid; tasks {dense} are segmentation")

    # ------------------------------------------------------------------ the token sequence
    def tokens(self, module: pl.LightningModule, tokens: Tensor) -> Tensor:
        tower = self._tower(module)
        pool = self.pool
        with torch.no_grad():  # the query: the frozen tower's class token without prompts
            query = tower.ln_post(tower.transformer(tokens)[:, 0])
        similarity = F.normalize(query.float(), dim=-1) @ F.normalize(pool.keys.float(), dim=-1).t()  # (B, M)
        chosen = similarity.detach().topk(self.top_k, dim=1).indices  # (B, N)
        if module.training and torch.is_grad_enabled():
            self._pull.append((1.0 - similarity.gather(1, chosen)).sum(dim=1).mean())
            self.usage += torch.bincount(chosen.flatten().cpu(), minlength=self.pool_size)
        prompts = pool.prompts[chosen].flatten(1, 2).to(tokens.dtype)  # (B, N * L_p, width)
        return torch.cat([tokens[:, :1], prompts, tokens[:, 1:]], dim=1)

    def loss_terms(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch, outputs: Outputs) -> Dict[str, Tensor]:
        pulls, self._pull = self._pull, []
        if not pulls or self.key_weight == 0:
            return {}
        return {"l2p_keys": self.key_weight * torch.stack(pulls).mean()}

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Tensor]:
        # the prompts and keys are the module's parameters (its checkpoint); the usage counts are the strategy's
        return {} if self.usage is None else {"usage": self.usage.clone()}

    def load_state_dict(self, state_dict: Dict[str, Tensor]) -> None:
        if "usage" in state_dict and self.usage is not None:
            self.usage = state_dict["usage"].clone()
