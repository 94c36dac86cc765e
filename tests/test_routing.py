"""The task router (framework/routing): it names the image source of real MedMNIST images from
frozen features, says "unknown" for images of a source it never learned, survives a checkpoint, and
scores a wrong route as a wrong answer in every head kind."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from conftest import REPO

from framework.backbone import CLIPBackbone
from framework.core.specs import TaskSpec
from framework.heads import build_head
from framework.routing import GaussianRouter, LearnedRouter, PrototypeRouter, build_router, check_router_config

DEMO = REPO / "data" / "demo" / "medmnist"


def _images(flag: str, split: str, n: int) -> torch.Tensor:
    with np.load(DEMO / f"{flag}.npz") as z:
        x = torch.from_numpy(z[f"{split}_images"][:n])
    return x.permute(0, 3, 1, 2) if x.ndim == 4 else x[:, None]


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return CLIPBackbone(model_name="medcl-vit-tiny")


@pytest.fixture(scope="module")
def images():
    return {flag: {split: _images(flag, split, n) for split, n in (("train", 300), ("val", 100), ("test", 200))}
            for flag in ("bloodmnist", "organamnist")}


@pytest.mark.parametrize("kind", ["gaussian", "prototypes", "learned"])
def test_the_router_names_the_source_of_real_images(kind, backbone, images):
    router = build_router({"kind": kind}, backbone)
    router.snapshot(backbone)
    for flag, splits in images.items():
        threshold = router.learn(flag, router.features(splits["train"]), router.features(splits["val"]))
        assert math.isfinite(threshold)
    for index, (flag, splits) in enumerate(images.items()):
        routes = router(splits["test"])
        assert routes.sources == ["bloodmnist", "organamnist"]
        assert (routes.source == index).float().mean() > 0.95, flag  # blood-cell microscopy vs abdominal CT
        assert routes.unknown.float().mean() < 0.1, flag  # the 0.99 quantile of 100 validation images
        assert ((0 <= routes.confidence) & (routes.confidence <= 1)).all()


@pytest.mark.parametrize("kind", ["gaussian", "prototypes", "learned"])
def test_images_of_a_source_never_learned_are_called_unknown(kind, backbone, images):
    router = build_router({"kind": kind}, backbone)
    router.snapshot(backbone)
    blood = images["bloodmnist"]
    router.learn("bloodmnist", router.features(blood["train"]), router.features(blood["val"]))
    known, other = router(blood["test"]), router(images["organamnist"]["test"])
    assert other.unknown.float().mean() > 0.9 and known.unknown.float().mean() < 0.1
    assert other.names().count("unknown") == int(other.unknown.sum())
    labels = torch.cat([torch.zeros(len(known.unknown_score)), torch.ones(len(other.unknown_score))])
    assert roc_auc_score(labels.numpy(), torch.cat([known.unknown_score, other.unknown_score]).numpy()) > 0.95
    noise = torch.randint(0, 256, (32, 3, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert router(noise).unknown.all()


@pytest.mark.parametrize("kind", ["gaussian", "prototypes", "learned"])
def test_the_router_state_survives_a_state_dict_round_trip(kind, backbone, images):
    router = build_router({"kind": kind, "seed": 3}, backbone)
    router.snapshot(backbone)
    for flag, splits in images.items():
        router.learn(flag, router.features(splits["train"]), router.features(splits["val"]))
    router.add_task("organ_risk", "organamnist")
    state = router.state_dict()
    other = build_router({"kind": kind, "seed": 3}, CLIPBackbone(model_name="medcl-vit-tiny"))  # other random weights
    other.load_state_dict(state)
    test = images["organamnist"]["test"]
    a, b = router(test), other(test)
    assert torch.equal(a.source, b.source) and torch.allclose(a.unknown_score, b.unknown_score)
    assert other.tasks_of["organamnist"] == ["organ_risk"] and other.thresholds == router.thresholds
    with pytest.raises(ValueError, match="checkpoint's router is of kind"):
        build_router({"kind": "learned" if kind != "learned" else "prototypes"}, backbone).load_state_dict(state)
    with pytest.raises(ValueError, match="reading 'layers' features, this model's is .* reading 'pooled'"):
        build_router({"kind": kind, "features": "pooled"}, backbone).load_state_dict(state)


def test_the_frozen_copy_keeps_the_starting_weights_while_the_backbone_trains(backbone, images):
    router = build_router({"kind": "prototypes"}, backbone)
    router.snapshot(backbone)
    before = router.features(images["bloodmnist"]["test"][:8])
    trained = CLIPBackbone(model_name="medcl-vit-tiny")
    trained.load_state_dict(backbone.state_dict())
    with torch.no_grad():
        for p in trained.clip.visual.parameters():
            p.add_(0.5)
    router.snapshot(trained)  # taken once: a later call changes nothing
    assert torch.equal(router.features(images["bloodmnist"]["test"][:8]), before)
    assert not any(p.requires_grad for p in router.parameters())
    assert not hasattr(router.features.backbone.clip, "transformer") or router.features.backbone.clip.transformer is None  # no text tower copied


@pytest.mark.parametrize(
    "config, message",
    [
        ({"kind": "nearest"}, "router expected null or a mapping with kind one of"),
        ("prototypes", "router expected null or a mapping"),
    ],
)
def test_bad_router_configs_are_refused(config, message):
    with pytest.raises(ValueError, match=message):
        check_router_config(config, "ContinualModule")


@pytest.mark.parametrize(
    "cls, options, message",
    [
        (PrototypeRouter, {"unknown_quantile": 1.0}, r"unknown_quantile expected a number in \[0.5, 1\)"),
        (PrototypeRouter, {"prototypes_per_source": 0}, "prototypes_per_source expected an integer >= 1"),
        (PrototypeRouter, {"temperature": 0}, "temperature expected a number > 0"),
        (LearnedRouter, {"memory_per_source": 1}, "memory_per_source expected an integer >= 2"),
        (LearnedRouter, {"lr": -1}, "lr expected a number > 0"),
        (GaussianRouter, {"shrinkage": 0}, r"shrinkage expected a number in \(0, 1\)"),
        (GaussianRouter, {"features": "tokens"}, r"features expected one of \['layers', 'pooled'\]"),
    ],
)
def test_bad_router_options_are_refused(cls, options, message, backbone):
    with pytest.raises(ValueError, match=message):
        cls(backbone, **options)
    with pytest.raises(ValueError, match="router kind 'prototypes': .*unexpected keyword argument 'k'"):
        build_router({"kind": "prototypes", "k": 3}, backbone)


def test_routing_before_any_source_is_learned_says_so(backbone):
    router = build_router({"kind": "prototypes"}, backbone)
    with pytest.raises(RuntimeError, match="no image source learned yet"):
        router(torch.zeros(2, 3, 28, 28))
    with pytest.raises(ValueError, match="at least 2 validation feature vectors"):
        router.learn("x", torch.randn(5, 8), torch.randn(1, 8))


# ---------------------------------------------------------------------------- a wrong route scores as wrong
@pytest.mark.parametrize(
    "spec, outputs, target",
    [
        (TaskSpec(name="c", kind="classification", class_names=("a", "b", "c")), torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])),
        (TaskSpec(name="m", kind="multilabel", class_names=("a", "b")), torch.randn(4, 2), torch.tensor([[0, 1], [1, 1], [0, 0], [1, 0]])),
        (TaskSpec(name="s", kind="segmentation", label_names=("polyp",)), torch.randn(2, 2, 8, 8), torch.ones(2, 8, 8, dtype=torch.long)),
    ],
)
def test_unrouted_outputs_score_as_wrong(spec, outputs, target):
    head = build_head(spec, 16, None)
    metrics = head.make_metrics()
    metrics.update(**head.metric_inputs(head.unrouted_outputs(outputs, target), target))
    assert float(metrics.compute()[head.score_name]) == 0.0


def test_unrouted_prognosis_outputs_rank_nobody():
    spec = TaskSpec(name="p", kind="prognosis")
    head = build_head(spec, 16, None)
    target = torch.tensor([[1.0, 1], [2.0, 1], [3.0, 0], [4.0, 1]])
    metrics = head.make_metrics()
    metrics.update(**head.metric_inputs(head.unrouted_outputs(torch.randn(4, 1), target), target))
    assert float(metrics.compute()["c_index"]) == pytest.approx(0.5)  # all risks tied


# ---------------------------------------------------------------------------- image sources in specs
def test_a_task_names_its_image_source():
    assert TaskSpec(name="organamnist", kind="classification", class_names=("a", "b")).source == "organamnist"
    risk = TaskSpec(name="organ_risk", kind="prognosis", domain="organamnist")
    assert risk.source == "organamnist"
    assert TaskSpec(name="organ_risk", kind="prognosis").same_task(risk)  # a checkpoint written before tasks named their source
    assert not risk.same_task(TaskSpec(name="organ_risk", kind="prognosis", domain="bloodmnist"))
    with pytest.raises(ValueError, match="field 'domain' expected empty or an identifier"):
        TaskSpec(name="x", kind="prognosis", domain="organ amnist")


VOLUMES = REPO.parent / "shared" / "data" / "medmnist" / "adrenalmnist3d.npz"


@pytest.mark.skipif(not VOLUMES.is_file(), reason="needs ../shared/data/medmnist (CI has it)")
def test_the_router_reads_volumes_beside_images(backbone, images):
    """A 3D source (AdrenalMNIST3D volumes, read slice by slice) and a 2D one in one router."""
    with np.load(VOLUMES) as z:
        volumes = {split: torch.from_numpy(z[f"{split}_images"][:n])[:, None] for split, n in (("train", 120), ("val", 60), ("test", 60))}
    router = build_router({"kind": "gaussian"}, backbone)
    router.snapshot(backbone)
    router.learn("adrenalmnist3d", router.features(volumes["train"]), router.features(volumes["val"]))
    blood = images["bloodmnist"]
    router.learn("bloodmnist", router.features(blood["train"]), router.features(blood["val"]))
    assert router.features(volumes["test"][:2]).shape == router.features(blood["test"][:2]).shape
    assert ((router(volumes["test"]).source == 0).float().mean()) > 0.95
    assert ((router(blood["test"]).source == 1).float().mean()) > 0.95


def test_routed_rows_of_ddp_ranks_merge_with_every_rank_s_columns(tmp_path):
    """Under DDP each rank writes the routed rows it predicted; ranks that saw other tasks have other columns."""
    from framework.callbacks.prediction_writer import merge_rank_parts

    folder = tmp_path / "routed"
    folder.mkdir()
    (folder / "predictions.rank0.csv").write_text("index,id,source,blood:prediction\n2,c,bloodmnist,4\n0,a,bloodmnist,1\n")
    (folder / "predictions.rank1.csv").write_text("index,id,source,organ:prediction\n1,b,organamnist,7\n")
    assert merge_rank_parts(folder, union=True) == 3
    lines = (folder / "predictions.csv").read_text().splitlines()
    assert lines == ["index,id,source,blood:prediction,organ:prediction", "0,a,bloodmnist,1,", "1,b,organamnist,,7", "2,c,bloodmnist,4,"]
    other = tmp_path / "task"
    other.mkdir()
    (other / "predictions.rank0.csv").write_text("index,id,p\n0,a,1\n")
    (other / "predictions.rank1.csv").write_text("index,id,q\n1,b,2\n")
    with pytest.raises(ValueError, match="columns .* differ"):
        merge_rank_parts(other)


def test_the_ood_auroc_ranks_unbounded_unknown_scores():
    """Mahalanobis unknown scores run into the thousands: the AUROC must rank them, not squash them."""
    from framework.metrics.task_agnostic import _auroc

    known = torch.tensor([900.0, 1200.0, 1300.0, 1500.0], dtype=torch.float64)
    assert _auroc(torch.tensor([3700.0, 4000.0, 5500.0], dtype=torch.float64), known) == 1.0
    assert _auroc(torch.tensor([1000.0, 1400.0], dtype=torch.float64), known) == pytest.approx(0.5)
    assert math.isnan(_auroc(torch.empty(0, dtype=torch.float64), known))
