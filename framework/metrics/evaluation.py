"""Evaluation outside the Lightning loops: a head on a dataloader, an untrained head (zero-shot),
a linear probe on frozen features, and the random-init reference model.

Lightning cannot run ``trainer.test`` inside ``fit``, so the experience-end protocol of
:class:`~framework.callbacks.ContinualEvaluation` runs these loops itself.  Every loop shards its
data across DDP ranks without padding (rank ``r`` of ``W`` takes samples ``r, r + W, ...``), and the
torchmetrics collections synchronise their states across ranks in ``compute()``, so each test
sample is counted exactly once however many processes run.

**Undefined AUROC.** A one-vs-rest AUROC needs positive and negative samples of a class.
torchmetrics scores a class without them as 0, so a test split holding one class scored 0.0000.
The classification heads use :class:`~framework.metrics.auroc.DefinedAUROC` instead of a macro
``MulticlassAUROC`` / ``MultilabelAUROC``: the macro average over the classes whose AUROC is defined (a class absent
from the test set is skipped, never counted as 0), and ``NaN`` when no class has both, e.g. a test
split with a single class.
"""
from __future__ import annotations

from typing import Any, ContextManager, Dict, Iterable, Iterator, Mapping, Optional, Tuple

import numpy as np
import torch
from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler
from pytorch_lightning.utilities import move_data_to_device
from torch import Tensor, nn
from torch.utils.data import DataLoader

from framework.distributed import rank_and_world_size
from framework.metrics.auroc import DefinedAUROC, defined_auroc  # noqa: F401 (re-exported)
from framework.heads import HEAD_REGISTRY, TaskHead
from framework.core.specs import TaskSpec

__all__ = [
    "evaluate_head",
    "fresh_head",
    "can_route",
    "supports_zero_shot",
    "shard_loader",
    "extract_features",
    "linear_probe",
    "PROBE_DEFAULTS",
    "DefinedAUROC",
    "defined_auroc",
]

#: the fixed budget of the linear probe (see :func:`linear_probe`)
PROBE_DEFAULTS = {"samples_per_class": 10, "max_iter": 1000, "C": 1.0}


def shard_loader(loader: DataLoader) -> DataLoader:
    """``loader`` restricted to this DDP rank's share of its dataset, or ``loader`` itself in a
    single process.  Lightning's ``UnrepeatedDistributedSampler`` (what it uses for ``predict``)
    gives rank ``r`` of ``W`` the samples ``r, r + W, ...``: no sample is repeated or dropped,
    unlike the padding ``DistributedSampler``."""
    rank, world = rank_and_world_size()
    if world == 1:
        return loader
    sampler = UnrepeatedDistributedSampler(loader.dataset, num_replicas=world, rank=rank, shuffle=False)
    return DataLoader(
        loader.dataset, batch_size=loader.batch_size, sampler=sampler, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
        generator=loader.generator,
    )


def can_route(model: nn.Module, spec: TaskSpec) -> bool:
    """Whether ``model``'s image tower can read ``spec``'s images: its modality has adapters in the
    model, or its images have 1 or 3 channels (the base tower)."""
    return spec.modality in model.adapters.modalities or spec.in_channels in (1, 3)


def _route(model: nn.Module, spec: TaskSpec) -> ContextManager:
    return model.route(spec)  # its modality's adapters (if any) and its input size


def supports_zero_shot(spec: TaskSpec) -> bool:
    """Whether an untrained head of ``spec``'s kind predicts from prompts (CLIP zero-shot)."""
    return bool(getattr(HEAD_REGISTRY.get(spec.kind), "zero_shot", False))


def fresh_head(model: nn.Module, spec: TaskSpec, head_args: Optional[Mapping[str, Any]] = None, seed: int = 0) -> TaskHead:
    """``model.new_head(spec, head_args)`` (an untrained head, NOT added to the model), built under
    ``seed`` on a forked generator: every call builds the same head (the before-training cells of
    the matrix and the random-init reference use identical heads) and the global state is untouched.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return model.new_head(spec, head_args)


@torch.no_grad()
def evaluate_head(
    model: nn.Module,
    head: TaskHead,
    loader: Iterable[Mapping[str, Mapping[str, Tensor]]],
    key: str,
    device: torch.device,
) -> Dict[str, float]:
    """The head's metric collection over a keyed loader (``batch[key]`` holds image and target).

    The model is routed to the head's modality.  Returns metric name -> value plus ``score``
    (the head's primary metric); an AUROC is ``NaN`` where undefined (the heads' :class:`DefinedAUROC`).
    The caller sets eval mode.
    """
    metrics = head.make_metrics().to(device)
    if isinstance(loader, DataLoader):
        loader = shard_loader(loader)
    with _route(model, head.spec):
        for batch in loader:
            sub = move_data_to_device(batch[key], device)
            outputs = head(model.backbone, sub["image"])  # under the trainer's precision (bf16 autocast): metrics in fp32
            metrics.update(**head.metric_inputs(outputs.float() if outputs.is_floating_point() else outputs, sub["target"]))
    values = {k: float(v) for k, v in metrics.compute().items()}
    values["score"] = values[head.score_name]
    return values


@torch.no_grad()
def extract_features(
    model: nn.Module, spec: TaskSpec, loader: Iterable[Mapping[str, Tensor]], device: torch.device, keep_images: bool = False
) -> Tuple[Tensor, Tensor, Optional[Tensor]]:
    """L2-normalised pooled image embeddings, targets and (``keep_images``) the images, on the CPU,
    of an unkeyed loader (``{"image", "target"}``) through ``spec``'s modality.  The caller sets eval mode.

    Raises:
        ValueError: naming the task, if the loader yields nothing.
    """
    feats, targets, images = [], [], []
    with _route(model, spec):
        for batch in loader:
            feats.append(model.backbone.encode_image(move_data_to_device(batch["image"], device), normalize=True).float().cpu())
            targets.append(batch["target"].cpu())
            if keep_images:
                images.append(batch["image"].cpu())
    if not feats:
        raise ValueError(f"task '{spec.name}': no samples to encode")
    return torch.cat(feats), torch.cat(targets), torch.cat(images) if keep_images else None


def probe_indices(targets: np.ndarray, samples_per_class: int, seed: int) -> np.ndarray:
    """Sorted indices of at most ``samples_per_class`` samples of every class, drawn with ``seed``."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in np.unique(targets):
        members = np.flatnonzero(targets == label)
        chosen.append(rng.choice(members, size=min(samples_per_class, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def linear_probe(
    model: nn.Module,
    spec: TaskSpec,
    train: Iterator,
    test: Iterator,
    device: torch.device,
    samples_per_class: int = PROBE_DEFAULTS["samples_per_class"],
    seed: int = 0,
    max_iter: int = PROBE_DEFAULTS["max_iter"],
    C: float = PROBE_DEFAULTS["C"],
) -> Dict[str, float]:
    """Linear probe on frozen features: scikit-learn's L2-regularised logistic regression (the
    probe of the CLIP paper) fitted on ``samples_per_class`` training images per class, scored on
    every test image.

    The same seeded training images are used after every experience, so rows differ only by the
    backbone.  Every DDP rank computes the same probe on the full data (it is small by design).

    Returns:
        ``acc``, ``balanced_acc``, ``auroc`` (one-vs-rest macro over the classes present, ``NaN``
        when the test set holds one class; :func:`defined_auroc`) and ``score`` (= ``acc``).

    Raises:
        ValueError: if the task is not single-label classification.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    if spec.kind != "classification":
        raise ValueError(f"linear_probe: task '{spec.name}' is of kind {spec.kind!r}; the probe serves kind 'classification'")
    x_train, y_train = (t.numpy() for t in extract_features(model, spec, train, device)[:2])
    keep = probe_indices(y_train, samples_per_class, seed)
    x_train, y_train = x_train[keep], y_train[keep]
    x_test, y_test = (t.numpy() for t in extract_features(model, spec, test, device)[:2])
    classifier = LogisticRegression(C=C, max_iter=max_iter)
    classifier.fit(x_train, y_train)
    predicted = classifier.predict(x_test)
    out = {"acc": float(accuracy_score(y_test, predicted)), "balanced_acc": float(balanced_accuracy_score(y_test, predicted))}
    probabilities = np.zeros((len(x_test), spec.num_classes))
    probabilities[:, classifier.classes_] = classifier.predict_proba(x_test)
    # macro one-vs-rest over the classes present (with negatives); NaN with a single class
    out["auroc"] = defined_auroc(torch.as_tensor(probabilities), torch.as_tensor(y_test).long())[0]
    out["score"] = out["acc"]
    out["train_samples"] = float(len(keep))
    return out
