"""Contrastive image–text pretraining of a CLIP backbone (``medcl pretrain``).

The loss is open_clip's ``ClipLoss`` (symmetric InfoNCE over the batch, gathered across DDP ranks)
with CLIP's learnable temperature.  The text tower may stay frozen (the default): its outputs are
then cached per caption, so an epoch costs little more than the image tower's forward and backward.
A Hugging Face text tower (e.g. the ``*-minilm`` backbones) keeps its transformer frozen at its
public weights but trains its linear projection into the shared space (``train_text_projection``),
which is what aligns a pretrained sentence encoder with a new image tower.

Validation and test score zero-shot classification on the data module's labelled tasks (class
prompts through the text tower, as a MedCL classification head does before any training), and the
contrastive loss on held-out pairs where the data module has them.  The data module is any
:class:`~pytorch_lightning.LightningDataModule` whose training batches are ``{"image", "text"}``
and whose evaluation loaders yield ``{"image", "text"}`` pairs or ``{"image", "target"}`` batches of
the task at the same position of its ``zero_shot_tasks`` list (see ``data_modules/pairs.py``).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from framework.backbone.clip import CLIPBackbone
from framework.core.attachment import attached_trainer
from framework.core.specs import TaskSpec

__all__ = ["ContrastivePretraining"]


def _positive(value: Any, name: str, allow_zero: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        raise ValueError(f"ContrastivePretraining: {name} expected a {'non-negative' if allow_zero else 'positive'} number, found {value!r}")


class ContrastivePretraining(pl.LightningModule):
    """CLIP-style pretraining of an open_clip backbone on image–caption pairs.

    Args:
        backbone: open_clip architecture (a plain name, ``hf-hub:`` or ``local-dir:``), as for MedCL models.
        pretrained: weights to start from (continual pretraining: a weights file an earlier ``medcl
            pretrain`` wrote, or a shipped tag); ``None`` starts from random image weights.
        image_size: the image tower's input size (``None``: the architecture's).
        freeze_text_tower: keep the text tower at its weights (captions are encoded once and cached).
        train_text_projection: with a frozen Hugging Face text tower, still train its projection into
            the shared embedding space (ignored for other text towers).
        lr: AdamW learning rate (cosine decay to 0 over the run after ``warmup_steps``).
        weight_decay: AdamW weight decay (not applied to biases, norms, embeddings and the temperature).
        warmup_steps: linear warm-up steps.

    Raises:
        ValueError: for invalid numbers (and see :class:`~framework.backbone.CLIPBackbone`).
    """

    def __init__(
        self,
        backbone: str = "medcl-vit-tiny-minilm",
        pretrained: Optional[str] = None,
        image_size: Optional[int] = None,
        freeze_text_tower: bool = True,
        train_text_projection: bool = True,
        lr: float = 1e-3,
        weight_decay: float = 0.1,
        warmup_steps: int = 50,
    ) -> None:
        super().__init__()
        _positive(lr, "lr")
        _positive(weight_decay, "weight_decay", allow_zero=True)
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ValueError(f"ContrastivePretraining: warmup_steps expected an integer >= 0, found {warmup_steps!r}")
        self.save_hyperparameters()
        self.backbone = CLIPBackbone(backbone, pretrained=pretrained, image_size=image_size, freeze_text_tower=freeze_text_tower)
        clip = self.backbone.clip
        clip.logit_scale.requires_grad_(True)  # CLIP's temperature is learned here (MedCL's heads own theirs)
        text = getattr(clip, "text", None)
        #: a frozen Hugging Face text tower whose projection trains (its pooled outputs are cached)
        self.hf_projection = bool(freeze_text_tower and train_text_projection and text is not None and hasattr(text, "proj") and hasattr(text, "pooler"))
        if self.hf_projection:
            for p in text.proj.parameters():
                p.requires_grad_(True)
        self._caption_cache: Dict[str, Tensor] = {}
        self._loss = None
        #: zero-shot accuracy per stage and task (registered, so Lightning logs and resets them)
        self.zero_shot_metrics = nn.ModuleDict()

    # ------------------------------------------------------------------ text side
    @property
    def text_trainable(self) -> bool:
        """Every text weight trains (no caching)."""
        return not self.hparams.freeze_text_tower

    def _cached(self, captions: Sequence[str]) -> Tensor:
        """Frozen text features per caption (pooled transformer outputs for :attr:`hf_projection`,
        final normalised embeddings otherwise), computed once per caption in eval mode."""
        device = self.backbone.pixel_mean.device
        missing = [c for c in dict.fromkeys(captions) if c not in self._caption_cache]
        for start in range(0, len(missing), 256):
            chunk = missing[start:start + 256]
            with torch.no_grad():
                if self.hf_projection:
                    text = self.backbone.clip.text
                    was = text.transformer.training
                    text.transformer.eval()
                    try:
                        tokens = self.backbone.tokenizer(chunk).to(device)
                        mask = (tokens != text.config.pad_token_id).long()
                        features = text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask)
                    finally:
                        text.transformer.train(was)
                else:
                    features = self.backbone.encode_prompts(chunk, cache=False)
            for caption, feature in zip(chunk, features):
                self._caption_cache[caption] = feature.detach()
        return torch.stack([self._caption_cache[c].to(device) for c in captions])

    def encode_captions(self, captions: Sequence[str]) -> Tensor:
        """L2-normalised text embeddings ``(len(captions), embed_dim)`` (with gradients where the text side trains)."""
        if self.text_trainable:
            return self.backbone.encode_prompts(list(captions))
        features = self._cached(captions)
        if self.hf_projection:
            return F.normalize(self.backbone.clip.text.proj(features), dim=-1)
        return features

    # ------------------------------------------------------------------ training
    def setup(self, stage: str) -> None:
        from open_clip.loss import ClipLoss

        trainer = attached_trainer(self)
        world = trainer.world_size if trainer is not None else 1
        rank = trainer.global_rank if trainer is not None else 0
        # every rank's features join the batch's negatives (gather_with_grad keeps the gradients exact)
        self._loss = ClipLoss(gather_with_grad=world > 1, rank=rank, world_size=world)

    def encode_images(self, images: Tensor) -> Tensor:
        """L2-normalised image embeddings, the tower run at the images' own size (never resized to fit it)."""
        with self.backbone.input_size(images.shape[-2:]):
            return self.backbone.encode_image(images)

    def contrastive_loss(self, images: Tensor, captions: Sequence[str]) -> Tensor:
        """open_clip's ``ClipLoss`` of a batch of images and their captions."""
        if self._loss is None:
            self.setup("fit")
        image_features = self.encode_images(images)
        text_features = self.encode_captions(captions)
        scale = self.backbone.clip.logit_scale.exp().clamp(max=100.0)
        return self._loss(image_features, text_features, scale)

    def training_step(self, batch: Dict[str, Any], batch_idx: int) -> Tensor:
        loss = self.contrastive_loss(batch["image"], batch["text"])
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["text"]))
        self.log("train/temperature", 1.0 / self.backbone.clip.logit_scale.exp().detach(), batch_size=len(batch["text"]))
        return loss

    def configure_optimizers(self):
        decay, no_decay = [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            (no_decay if p.ndim < 2 or "logit_scale" in name or "embedding" in name or name.endswith("class_embedding") else decay).append(p)
        optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": self.hparams.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=self.hparams.lr
        )
        trainer = attached_trainer(self)
        total = max(1, int(trainer.estimated_stepping_batches)) if trainer is not None else 1
        warmup = min(self.hparams.warmup_steps, total - 1) if total > 1 else 0

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ evaluation
    def zero_shot_tasks(self) -> List[Optional[TaskSpec]]:
        """The data module's labelled tasks, one per evaluation loader (``None`` for a loader of pairs)."""
        trainer = attached_trainer(self)
        datamodule = trainer.datamodule if trainer is not None else None
        return list(getattr(datamodule, "zero_shot_tasks", []) or [])

    def zero_shot_logits(self, images: Tensor, spec: TaskSpec) -> Tensor:
        """Cosine similarity of images and the task's class prompts ``(B, num_classes)``."""
        prompts = self.encode_captions(spec.prompts)
        return self.encode_images(images) @ prompts.T

    @torch.no_grad()
    def zero_shot_scores(self, loaders: Sequence[Any], tasks: Sequence[Optional[TaskSpec]]) -> Dict[str, float]:
        """Zero-shot accuracy of every labelled task over its whole loader (outside the Lightning loops)."""
        was = self.training
        self.eval()
        scores: Dict[str, float] = {}
        try:
            for loader, spec in zip(loaders, tasks):
                if spec is None:
                    continue
                correct = total = 0
                for batch in loader:
                    images, target = batch["image"].to(self.device), batch["target"].reshape(-1).to(self.device)
                    correct += int((self.zero_shot_logits(images, spec).argmax(dim=1) == target).sum())
                    total += len(target)
                scores[spec.name] = correct / max(1, total)
        finally:
            self.train(was)
        return scores

    def _evaluate(self, batch: Dict[str, Any], dataloader_idx: int, stage: str) -> None:
        if "text" in batch:
            loss = self.contrastive_loss(batch["image"], batch["text"])
            self.log(f"{stage}/loss", loss, batch_size=len(batch["text"]), add_dataloader_idx=False)
            return
        tasks = self.zero_shot_tasks()
        if dataloader_idx >= len(tasks) or tasks[dataloader_idx] is None:
            raise ValueError(
                f"ContrastivePretraining: evaluation loader {dataloader_idx} yields labelled batches, but the data module's "
                f"zero_shot_tasks names no task for it (found {len(tasks)} tasks)"
            )
        spec = tasks[dataloader_idx]
        key = f"{stage}:{spec.name}"
        if key not in self.zero_shot_metrics:
            self.zero_shot_metrics[key] = MulticlassAccuracy(num_classes=len(spec.class_names), average="micro").to(self.device)
        metric = self.zero_shot_metrics[key]
        target = batch["target"].reshape(-1).long()
        metric.update(self.zero_shot_logits(batch["image"], spec).argmax(dim=1), target)
        self.log(f"{stage}/zero_shot/{spec.name}", metric, on_step=False, on_epoch=True, batch_size=len(target), add_dataloader_idx=False,
                 metric_attribute=f"zero_shot_metrics.{key}")

    def validation_step(self, batch: Dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, dataloader_idx, "val")

    def test_step(self, batch: Dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._evaluate(batch, dataloader_idx, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_mean("val")

    def on_test_epoch_end(self) -> None:
        self._log_mean("test")

    def _log_mean(self, stage: str) -> None:
        scores = [m.compute() for key, m in self.zero_shot_metrics.items() if key.startswith(f"{stage}:") and m.update_count]
        if scores:
            self.log(f"{stage}/zero_shot/mean", torch.stack(scores).mean())
