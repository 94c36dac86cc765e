"""DER++ — Dark Experience Replay (Buzzega et al., NeurIPS 2020, "Dark Experience for General Continual
Learning: a Strong, Simple Baseline").

The buffer keeps, by reservoir sampling over the whole stream, every offered sample *with the
logits its head produced when it was stored*.  Each step adds two terms over two independent
draws from the buffer (the current tasks' own samples included):

* ``der_logits = alpha * MSE(f(x'), z')``: the head outputs of stored samples stay near the stored ones;
* ``der_replay = beta * loss(f(x''), y'')``: the usual task loss on stored samples (``beta = 0``: DER).

In MedCL every stored sample belongs to a task and its head, so ``f(x)`` is that task's head
output (logits, log-risks, mask logits; any task kind).  The batch is stored after the terms are
drawn, as in the reference implementation (Mammoth), with the outputs the step computed for it.
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from torch import Tensor

from framework.strategies.base import Batch, Outputs, register_strategy
from framework.strategies.regularizer import number
from framework.strategies.replay import Replay

__all__ = ["DER"]


@register_strategy("der")
class DER(Replay):
    """DER++ (``beta > 0``) or DER (``beta = 0``).

    Args:
        alpha: weight of the logit-matching term (> = 0; Buzzega et al. tune it in 0.1-1).
        beta: weight of the replayed task loss (>= 0; 0 gives DER).
        capacity, max_mb, policy, replay_batch_size, replay_ratio, balance, max_tasks_per_step,
            task_quota, seed: as for :class:`~framework.strategies.Replay` (``replay_batch_size``:
            samples in each of the two draws); ``policy`` must store while training (not ``herding``).

    Raises:
        ValueError: naming the argument, on an invalid value (as for ``Replay``), a negative weight,
            or ``policy='herding'`` (it stores no logits).
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.5, capacity: Optional[int] = 500, policy: Any = "reservoir", **kwargs: Any) -> None:
        self.alpha = number("DER: alpha", alpha, 0.0, strict=False)
        self.beta = number("DER: beta", beta, 0.0, strict=False)
        if policy == "herding":
            raise ValueError("DER: policy 'herding' stores exemplars at experience ends, without the logits DER needs; use 'reservoir' or 'class_balanced'")
        super().__init__(capacity=capacity, policy=policy, **kwargs)
        self._pending: Optional[Dict[str, Dict[str, Tensor]]] = None

    @property
    def state_key(self) -> str:
        return "DER"

    def describe(self) -> str:
        return f"DER(alpha={self.alpha}, beta={self.beta}, capacity={self.buffer.budget_capacity}, policy={self.policy_name!r})"

    # ------------------------------------------------------------------ training step
    def before_forward(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch) -> Batch:
        return batch  # replayed samples get their own forward passes in loss_terms

    def after_forward(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch, outputs: Outputs) -> None:
        # stored after the terms are drawn (loss_terms), with the logits of this step
        self._pending = {task: {"image": sub["image"], "target": sub["target"], "logits": outputs[task].detach().float()} for task, sub in batch.items()}

    def loss_terms(self, trainer: pl.Trainer, module: pl.LightningModule, batch: Batch, outputs: Outputs) -> Dict[str, Tensor]:
        terms: Dict[str, Tensor] = {}
        n = self.replay_size(sum(len(sub["target"]) for sub in batch.values()))
        device = next(iter(batch.values()))["image"].device
        if len(self.buffer) and n and self.alpha > 0:
            squared, count = None, 0
            for task, sub, out in self._forward_draw(module, n, device):
                value = ((out.float() - sub["logits"]) ** 2).sum()
                squared, count = value if squared is None else squared + value, count + sub["logits"].numel()
            if count:
                terms["der_logits"] = self.alpha * squared / count
        if len(self.buffer) and n and self.beta > 0:
            total, count = None, 0
            for task, sub, out in self._forward_draw(module, n, device):
                value = module.model_for(task).head(task).loss(out, sub["target"]) * len(sub["target"])  # mean over all drawn samples
                total, count = value if total is None else total + value, count + len(sub["target"])
            if count:
                terms["der_replay"] = self.beta * total / count
        pending, self._pending = self._pending, None
        for task, sub in (pending or {}).items():
            self.buffer.add_batch(task, sub["image"], sub["target"], logits=sub["logits"])
        return terms

    def _forward_draw(self, module: pl.LightningModule, n: int, device: torch.device):
        """``(task, stored fields, head outputs)`` for one draw of ``n`` stored samples (every task eligible)."""
        drawn = self.buffer.sample(n, balance=self.balance, max_tasks=self.max_tasks_per_step)
        for task, sub in drawn.items():
            sub = {k: v.to(device, non_blocking=True) for k, v in sub.items()}
            yield task, sub, module.model_for(task)(sub["image"], task)
