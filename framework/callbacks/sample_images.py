"""Test images with their predictions and targets, for W&B (``ContinualEvaluation(log_images=True)``).

Off by default: images of patients are patient data, and a W&B run that is synced later (or run
online) carries them off the machine.  When enabled, every experience end logs up to
:data:`MAX_IMAGES` test images of each evaluated task under ``samples/<task>``:

* classification: the image, captioned ``pred <class> / true <class>`` (multi-label: the sets of
  present classes);
* segmentation: the image with the predicted and the true mask as W&B mask overlays
  (``prediction`` / ``ground_truth``);
* prognosis: the image, captioned with the predicted risk score and the known ``(time, event)``.

Volumes show their middle slice (masks too); images with 2 or more than 3 channels show channel 0.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List

import numpy as np
import torch
from torch import Tensor

__all__ = ["MAX_IMAGES", "sample_images", "picture"]

#: most images logged per task and experience
MAX_IMAGES = 8


def picture(image: Tensor) -> np.ndarray:
    """A displayable ``(H, W)`` or ``(H, W, 3)`` uint8 array of one image ``(C, H, W)`` or volume
    ``(C, D, H, W)`` (middle slice); uint8 images are kept, floats (in ``[0, 1]``) scaled by 255."""
    image = image.detach().cpu()
    if image.ndim == 4:
        image = image[:, image.shape[1] // 2]
    image = image.permute(1, 2, 0) if image.shape[0] == 3 else image[0]
    if image.dtype != torch.uint8:
        image = (image.float().clamp(0, 1) * 255).round().to(torch.uint8)
    return np.ascontiguousarray(image.numpy())


def _mask(mask: Tensor) -> np.ndarray:
    mask = mask.detach().cpu()
    if mask.ndim == 3:  # a volume's label map: its middle slice
        mask = mask[mask.shape[0] // 2]
    return np.ascontiguousarray(mask.to(torch.int64).numpy())


def _first(loader: Iterable[Any], task: str, limit: int) -> Dict[str, Tensor]:
    """Up to ``limit`` samples (``image``, ``target``) of ``task`` from a keyed loader, in its order."""
    images: List[Tensor] = []
    targets: List[Tensor] = []
    count = 0
    for batch in loader:
        sub = batch[task]
        images.append(sub["image"][: limit - count])
        targets.append(sub["target"][: limit - count])
        count += len(images[-1])
        if count >= limit:
            break
    if not images:
        return {}
    return {"image": torch.cat(images), "target": torch.cat(targets)}


def _captions(spec, predictions: Dict[str, Tensor], target: Tensor) -> List[str]:
    names = list(spec.class_names or [])
    label = lambda i: names[i] if 0 <= i < len(names) else str(i)  # noqa: E731
    n = len(target)
    if spec.kind == "classification":
        pred = predictions["prediction"].view(-1).tolist()
        true = target.view(n, -1)[:, 0].tolist()
        return [f"pred {label(int(p))} / true {label(int(t))}" for p, t in zip(pred, true)]
    if spec.kind == "multilabel":
        present = lambda row: "{" + ", ".join(label(i) for i, v in enumerate(row) if v) + "}"  # noqa: E731
        return [f"pred {present(p)} / true {present(t)}" for p, t in zip(predictions["prediction"].tolist(), target.tolist())]
    if spec.kind == "prognosis":
        risk = predictions["risk"].view(-1).tolist()
        return [f"risk {r:.3f} / time {float(t[0]):g}, event {int(t[1])}" for r, t in zip(risk, target.view(n, -1).tolist())]
    return [spec.kind] * n


@torch.no_grad()
def sample_images(trainer, pl_module, datamodule, tasks: Iterable[str], split: str, limit: int = MAX_IMAGES) -> Dict[str, List[Any]]:
    """``{"samples/<task>": [wandb.Image, ...]}``: up to ``limit`` images of ``split`` for each task
    of ``tasks`` the model has a head for, with the model's prediction and the target.

    The model runs in eval mode without gradients (its mode is restored); the caller decides
    whether to log (only with a ``WandbLogger``, only on rank 0).
    """
    import wandb

    out: Dict[str, List[Any]] = {}
    was_training = pl_module.training
    pl_module.eval()
    try:
        for task in tasks:
            if task not in pl_module.task_specs:
                continue  # scored zero-shot only: no head of its own yet
            sub = _first(datamodule.eval_dataloader(task, split), task, limit)
            if not sub:
                continue
            model = pl_module.model_for(task)
            head = model.head(task)
            spec = pl_module.task_specs[task]
            predictions = {k: v.detach().cpu() for k, v in head.predict(model(sub["image"].to(pl_module.device), task)).items()}
            target = sub["target"].cpu()
            if spec.kind == "segmentation":
                labels = {0: "background", **{i + 1: name for i, name in enumerate(spec.label_names or [])}}
                images = [
                    wandb.Image(
                        picture(image),
                        masks={
                            "prediction": {"mask_data": _mask(pred), "class_labels": labels},
                            "ground_truth": {"mask_data": _mask(true), "class_labels": labels},
                        },
                        caption="masks: prediction / ground_truth",
                    )
                    for image, pred, true in zip(sub["image"], predictions["mask"], target)
                ]
            else:
                images = [wandb.Image(picture(image), caption=caption) for image, caption in zip(sub["image"], _captions(spec, predictions, target))]
            out[f"samples/{task}"] = images
    finally:
        pl_module.train(was_training)
    return out
