"""WiSE-FT in a stream: interpolate the fine-tuned backbone back towards its pretrained weights.

Wortsman et al. (CVPR 2022, "Robust fine-tuning of zero-shot models") show that fine-tuning erodes
a pretrained CLIP's zero-shot skill, and that the weight-space average
``theta = (1 - alpha) * theta_pretrained + alpha * theta_finetuned`` keeps much of it at a small
cost in-domain.  :class:`WiSEFT` applies that average to the backbone at the end of every
experience, so each experience starts from the interpolated weights.  It acts in Lightning's
``on_train_epoch_end`` of a callback, which runs before the paradigm's experience-end hooks
(:class:`~framework.callbacks.ContinualEvaluation` scores the interpolated model, wherever the
callback is listed) and before checkpoints are written (a resumed run continues from the
interpolated weights).  ``alpha = 1`` is plain fine-tuning, ``alpha = 0`` keeps the pretrained backbone (only the
heads, adapters and other new modules learn).  Heads, adapters (LoRA), per-domain BatchNorm and
modality patch embeddings have no pretrained counterpart and are kept as trained.
Written here because neither open_clip nor Lightning ships it (open_clip's WiSE-FT lives in a
separate research repository, for one fine-tuning run).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info
from torch import Tensor

__all__ = ["WiSEFT", "interpolate_weights"]


@torch.no_grad()
def interpolate_weights(module: torch.nn.Module, pretrained: Dict[str, Tensor], alpha: float) -> int:
    """In place: every floating-point parameter and buffer of ``module`` that ``pretrained`` holds with
    the same shape becomes ``(1 - alpha) * pretrained + alpha * current``; returns how many tensors changed."""
    changed = 0
    for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
        source = pretrained.get(name)
        if source is None or source.shape != tensor.shape or not tensor.is_floating_point():
            continue
        tensor.mul_(alpha).add_(source.to(device=tensor.device, dtype=tensor.dtype), alpha=1.0 - alpha)
        changed += 1
    return changed


class WiSEFT(pl.Callback):
    """Interpolate every model's backbone towards its pretrained weights at each experience end.

    Args:
        alpha: weight of the fine-tuned backbone, in ``[0, 1]``.

    Raises:
        ValueError: for an ``alpha`` outside ``[0, 1]``; at setup, for a model without pretrained
            weights (``pretrained: null`` would pull the backbone towards random weights), a model
            grown with ``init_from``, or a LightningModule that is not a MedCL paradigm.
    """

    def __init__(self, alpha: float = 0.5) -> None:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"WiSEFT: alpha expected a number in [0, 1] (weight of the fine-tuned backbone), found {alpha!r}")
        self.alpha = float(alpha)
        self._pretrained: Optional[List[Dict[str, Tensor]]] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        hparams = getattr(pl_module, "hparams", {})
        if not hparams.get("pretrained"):
            raise ValueError(
                "WiSEFT: the model has no pretrained weights (model.init_args.pretrained is null); WiSE-FT interpolates towards "
                "them, and towards random weights it would only erase training: set pretrained or remove the callback"
            )
        if hparams.get("init_from"):
            raise ValueError(
                f"WiSEFT: the model is grown from {hparams['init_from']!r} (init_from), whose backbone is not the pretrained one; "
                f"WiSE-FT supports runs that start from pretrained weights"
            )
        if not callable(getattr(pl_module, "is_last_epoch_of_experience", None)) or not callable(getattr(pl_module, "all_models", None)):
            raise ValueError(f"WiSEFT: expected a MedCL paradigm (framework.paradigms), found {type(pl_module).__name__}")

    def _pretrained_states(self, pl_module) -> List[Dict[str, Tensor]]:
        """The pretrained backbone weights of each model (a fresh model with its pretrained weights, kept on the CPU)."""
        if self._pretrained is None:
            with torch.random.fork_rng(devices=[]):  # building a model must not move training's random stream
                fresh = pl_module.new_model()
            state = {k: v.detach().cpu().clone() for k, v in fresh.backbone.state_dict().items()}
            self._pretrained = [state for _ in pl_module.all_models()]
        return self._pretrained

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module) -> None:
        epoch = trainer.current_epoch
        if self.alpha == 1.0 or not pl_module.is_last_epoch_of_experience(epoch):
            return
        experience = pl_module.experience_of_epoch(epoch)
        changed = 0
        for model, state in zip(pl_module.all_models(), self._pretrained_states(pl_module)):
            changed += interpolate_weights(model.backbone, state, self.alpha)
            clear = getattr(model.backbone, "clear_text_cache", None)
            if callable(clear):  # prompt embeddings cached from the old text weights
                clear()
        rank_zero_info(f"WiSE-FT after experience {experience}: {changed} backbone tensors interpolated, alpha {self.alpha:g}")
