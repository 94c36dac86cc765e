"""The training, validation, test and predict steps shared by every paradigm, and the evaluation loop
that runs inside ``fit`` (at experience ends)."""
from __future__ import annotations

from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

from torch import Tensor

from framework.core.data_protocol import ROUTED_KEY
from framework.core.divergence import check_loss, check_module
from framework.heads import TaskHead
from framework.metrics.evaluation import evaluate_head
from framework.routing.predict import predict_routed

__all__ = ["StepsMixin"]


class StepsMixin:
    """The steps (a part of :class:`~framework.paradigms.base.MedCLModule`)."""

    def _forward_task(self, task: str, sub: Mapping[str, Tensor]) -> Tuple[TaskHead, Tensor, Tensor]:
        model = self.model_for(task)
        head = model.head(task)
        outputs = model(sub["image"], task)
        return head, outputs, head.loss(outputs, sub["target"])

    def training_step(self, batch: Mapping[str, Mapping[str, Tensor]], batch_idx: int) -> Tensor:
        """The shared step: strategies' ``before_forward``, one forward per task, ``after_forward``, the
        sum of the task losses and the strategies' loss terms (each logged as ``train/<term>``, their sum
        as ``train/regularization``)."""
        runner = self.strategy_runner
        batch = runner.before_forward(batch)
        #: the batch this step trains on: the dataloader's, plus what strategies added (replayed exemplars);
        #: Lightning's ``on_train_batch_end`` gets the dataloader's batch only
        self.step_batch = batch
        if not batch:
            raise ValueError("training_step received an empty batch dict")
        outputs: Dict[str, Tensor] = {}
        for task, sub in batch.items():
            outputs[task] = self.model_for(task)(sub["image"], task)
        runner.after_forward(batch, outputs)
        total = None
        losses: Dict[str, Tensor] = {}
        # "samples": each task's mean loss times its share of the batch (None: "equal", a plain sum)
        samples = sum(len(sub["target"]) for sub in batch.values()) if self.hparams.task_loss_weighting == "samples" else None
        for task, sub in batch.items():
            loss = self.model_for(task).head(task).loss(outputs[task], sub["target"])
            losses[task] = loss
            self.log(f"train/{task}/loss", loss, batch_size=len(sub["target"]), on_step=False, on_epoch=True)
            if samples is not None:
                loss = loss * (len(sub["target"]) / samples)
            total = loss if total is None else total + loss
        reg = None
        for name, term in runner.loss_terms(batch, outputs).items():
            self.log(f"train/{name}", term, batch_size=1, on_step=False, on_epoch=True)
            reg = term if reg is None else reg + term
        if reg is not None:
            self.log("train/regularization", reg, batch_size=1, on_step=False, on_epoch=True)
            total = total + reg
        check_loss(self, total, losses, reg)  # a diverged run stops here (framework/core/divergence.py)
        self.log("train/loss", total, prog_bar=True, batch_size=1)
        return total

    def on_after_backward(self) -> None:
        self.strategy_runner.after_backward()

    def _eval_step(self, batch: Mapping[str, Mapping[str, Tensor]], stage: str) -> None:
        for task, sub in batch.items():
            if stage == "val" and task not in self.task_specs:
                continue  # a later experience's domain: no head yet, nothing to validate
            head, outputs, loss = self._forward_task(task, sub)
            metrics = self.metrics[f"{stage}_{task}"]
            metrics.update(**head.metric_inputs(outputs, sub["target"]))
            n = len(sub["target"])
            self.log(f"{stage}/{task}/loss", loss, batch_size=n, add_dataloader_idx=False)
            for key, metric in metrics.items(keep_base=True, copy_state=False):
                # the metric's attribute path, given so Lightning need not cache the names of a model that grows
                self.log(f"{metrics.prefix}{key}", metric, metric_attribute=f"metrics.{stage}_{task}.{key}", batch_size=n, add_dataloader_idx=False, prog_bar=False)

    def validation_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> Dict[str, Dict[str, Any]]:
        """``{task: {**head.predict(outputs), "target": ..., "id": ..., "affine": ...}}`` (the last three when the data
        has them; ``affine``: a NIfTI input's grid, for its predicted mask)."""
        out = {}
        for task, sub in batch.items():
            if task == ROUTED_KEY:  # no task given: the model's router chooses per image (framework/routing/predict.py)
                (model,) = self.all_models()
                out[task] = predict_routed(model, sub)
                continue
            model = self.model_for(task)
            head = model.head(task)
            predictions: Dict[str, Any] = dict(head.predict(model(sub["image"], task)))
            predictions.update({key: sub[key] for key in ("target", "id", "affine") if key in sub})
            out[task] = predictions
        return out

    def evaluate(self, task: str, dataloader: Iterable[Mapping[str, Mapping[str, Tensor]]], key: Optional[str] = None) -> Dict[str, float]:
        """Evaluate one task's head on a keyed dataloader outside the Lightning loops.

        Lightning cannot run ``trainer.test`` inside ``fit``; this is the experience-end
        evaluation loop, with the head's own torchmetrics collection (see
        :func:`~framework.metrics.evaluation.evaluate_head`: DDP ranks share the data, no sample twice).

        Args:
            task: the task whose head is evaluated.
            dataloader: batches ``{key: {"image", "target"}}``.
            key: the batch key holding the data (default ``task``; another name for a cross-domain set).

        Returns:
            metric name -> value (the head's :meth:`make_metrics`, plus ``score`` = the primary metric).
        """
        check_module(self, f"evaluating task {task!r}")
        model = self.model_for(task)
        was_training = self.training
        self.eval()
        try:
            return evaluate_head(model, model.head(task), dataloader, key or task, self.device)
        finally:
            self.train(was_training)
