"""Bring your own foundation model, item 2: a user's image tower by ``class_path`` (framework/backbone/custom.py).

Protocol shapes for 2D and 3D towers, the wiring through MedCLModule / MedCLModel / the CLI, a
checkpoint of a custom-backbone run that reloads and predicts the same logits, and the refusals."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch import Tensor, nn

from conftest import SHARED_MEDMNIST
from framework.adapters import AdapterSpec
from framework.backbone import CustomBackbone
from framework.cli import check_class_paths, run_cli
from framework.model import MedCLModel
from framework.paradigms import ContinualModule, JointModule
from framework.paradigms.base import hparam_differences
from framework.strategies.freezing_policy import FreezingPolicy
from framework.resume_check import resume_differences
from framework.core.specs import TaskSpec
from helpers import shrink_config

VIT3D = "framework.backbone.towers.MonaiViT3D"
TIMM2D = "framework.backbone.towers.TimmTower2D"
SMALL_3D = {"class_path": VIT3D, "init_args": {"hidden_size": 32, "num_layers": 1, "num_heads": 2, "embed_dim": 16}}
SMALL_2D = {"class_path": TIMM2D, "init_args": {"model_name": "test_resnet", "embed_dim": 16}}
needs_3d = pytest.mark.skipif(not (SHARED_MEDMNIST / "adrenalmnist3d.npz").is_file(), reason="needs ../shared/data/medmnist/adrenalmnist3d.npz")


class TextTower(nn.Module):
    """A minimal protocol tower with a text side and its own normalisation (3 channels, 2D)."""

    spatial_dims = 2
    in_channels = 3
    image_size = (16, 16)
    embed_dim = 8
    image_mean = (0.1, 0.2, 0.3)
    image_std = (0.5, 0.25, 2.0)

    def __init__(self, scale: float = 1.0) -> None:
        super().__init__()
        self.net = nn.Linear(3 * 16 * 16, 8)
        self.words = nn.EmbeddingBag(64, 8)
        self.scale = scale
        self.seen: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        self.seen = x
        return self.net(x.flatten(1)) * self.scale

    def encode_text(self, prompts: List[str]) -> Tensor:
        ids = torch.tensor([[sum(map(ord, word)) % 64 for word in p.split()[:4]] + [0] * (4 - len(p.split()[:4])) for p in prompts])
        return self.words(ids)


class NoEmbedDim(nn.Module):
    spatial_dims, in_channels, image_size = 2, 1, (8, 8)

    def forward(self, x: Tensor) -> Tensor:
        return x.flatten(1)


def _spec(name="t", kind="classification", spatial_dims=2, in_channels=1, **kw) -> TaskSpec:
    if kind == "segmentation":
        return TaskSpec(name=name, kind=kind, label_names=("lesion",), spatial_dims=spatial_dims, in_channels=in_channels, **kw)
    return TaskSpec(name=name, kind=kind, class_names=("a", "b", "c"), spatial_dims=spatial_dims, in_channels=in_channels, **kw)


# ---------------------------------------------------------------------------- the protocol
@pytest.mark.parametrize(
    "tower, shape",
    [
        (SMALL_3D, (2, 1, 28, 28, 28)),   # native 3D at the tower's size
        (SMALL_3D, (2, 1, 20, 20, 20)),   # smaller: trilinear up to 28^3
        (SMALL_3D, (2, 1, 40, 56, 30)),   # larger: tiled with 28^3 windows, never shrunk
        (SMALL_2D, (2, 1, 28, 28)),       # grayscale repeated to 3 channels
        (SMALL_2D, (2, 3, 40, 40)),       # resized to 28 px
        (SMALL_2D, (2, 3, 5, 28, 28)),    # volumes on a 2D tower: slice embeddings averaged
        (SMALL_2D, (2, 1, 3, 56, 56)),    # ... slices larger than the tower: tiled
    ],
)
def test_towers_give_one_normalised_embedding_per_sample(tower, shape):
    backbone = CustomBackbone(tower)
    images = torch.randint(0, 256, shape, dtype=torch.uint8)
    emb = backbone.encode_image(images)
    assert emb.shape == (2, 16)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)
    assert torch.allclose(backbone.encode_image(images.float() / 255), emb, atol=1e-5)  # uint8 v means v / 255


def test_a_2d_tower_averages_slice_embeddings_like_clip_backbone():
    backbone = CustomBackbone(SMALL_2D).eval()
    volumes = torch.rand(2, 3, 4, 28, 28)
    per_slice = torch.stack([backbone.encode_image(volumes[:, :, i], normalize=False) for i in range(4)], dim=2)
    assert torch.allclose(backbone.encode_image(volumes, normalize=False), per_slice.mean(dim=2), atol=1e-5)


def test_images_are_scaled_expanded_resized_and_normalised_with_the_towers_statistics():
    backbone = CustomBackbone(TextTower())
    images = torch.full((1, 1, 32, 32), 51, dtype=torch.uint8)  # 0.2 everywhere
    backbone.encode_image(images)
    seen = backbone.tower.seen
    assert seen.shape == (1, 3, 16, 16)
    expected = (0.2 - torch.tensor([0.1, 0.2, 0.3])) / torch.tensor([0.5, 0.25, 2.0])
    assert torch.allclose(seen[0, :, 0, 0], expected, atol=1e-5)
    default = CustomBackbone(SMALL_3D)  # no image_mean/std: 0.5 / 0.5
    assert default.prepare_images(torch.ones(1, 1, 28, 28, 28)).eq(1.0).all()


def test_intermediates_serve_the_segmentation_decoder():
    backbone = CustomBackbone(SMALL_2D)
    shapes = backbone.intermediate_shapes()
    assert [s[0] for s in shapes] == backbone.tower.encoder.feature_info.channels()
    assert backbone.intermediate_shapes(2) == shapes[-2:]
    model = MedCLModel(backbone={"tower": SMALL_2D})
    model.add_task(_spec("seg", kind="segmentation", in_channels=3))
    logits = model(torch.randint(0, 256, (2, 3, 28, 28), dtype=torch.uint8), "seg")
    assert logits.shape == (2, 2, 28, 28)


def test_a_text_side_gives_prompt_embeddings_and_zero_shot_heads():
    backbone = CustomBackbone(TextTower())
    assert backbone.has_text
    text = backbone.encode_prompts(["a b", "c d e"])
    assert text.shape == (2, 8) and torch.allclose(text.norm(dim=-1), torch.ones(2), atol=1e-5)
    model = MedCLModel(backbone={"tower": {"class_path": "test_custom_backbones.TextTower"}})
    head = model.add_task(_spec(in_channels=3))
    assert not head.learn_class_embeddings  # the class embeddings are the prompts' (CLIP-style)
    assert model(torch.rand(2, 3, 16, 16), "t").shape == (2, 3)


def test_without_a_text_side_class_embeddings_are_learned_from_random():
    model = MedCLModel(backbone={"tower": SMALL_3D})
    head = model.add_task(_spec(spatial_dims=3))  # learn_class_embeddings not asked for
    assert head.learn_class_embeddings and isinstance(head.class_embeddings, nn.Parameter)
    assert head.class_embeddings.std() > 0.5
    logits = model(torch.rand(2, 1, 28, 28, 28), "t")
    logits.sum().backward()
    assert head.class_embeddings.grad is not None and model.backbone.tower.proj.weight.grad is not None
    multilabel = model.add_task(TaskSpec(name="m", kind="multilabel", class_names=("x", "y"), spatial_dims=3, in_channels=1))
    assert multilabel.learn_class_embeddings


def test_load_pretrained_delegates_to_the_tower(tmp_path):
    source = CustomBackbone(SMALL_2D)
    torch.save(source.tower.state_dict(), tmp_path / "tower.pt")
    config = {"class_path": TIMM2D, "init_args": {**SMALL_2D["init_args"], "weights": str(tmp_path / "tower.pt")}}
    deferred = CustomBackbone(config, load_weights=False)
    assert not torch.equal(deferred.tower.proj.weight, source.tower.proj.weight)
    assert deferred.load_pretrained() == str(tmp_path / "tower.pt")
    assert all(torch.equal(a, b) for a, b in zip(deferred.tower.state_dict().values(), source.tower.state_dict().values()))
    assert CustomBackbone(SMALL_3D).load_pretrained() is None  # no weights: None


def test_freeze_policies_and_freeze_image_tower_reach_a_custom_tower():
    module = JointModule(backbone=SMALL_3D)
    module.add_task(_spec(spatial_dims=3))
    policy = FreezingPolicy("backbone")
    counts = policy.apply(module.all_models(), ["t"])
    assert counts["backbone"] == 0 and counts["heads"] > 0
    assert module.model.backbone.tower in policy.frozen_modules
    frozen = CustomBackbone(SMALL_3D, freeze_image_tower=True)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_config_and_checkpoint_backbones_compare_as_stored():
    stored = {"backbone": {"class_path": VIT3D, "init_args": {}}}
    assert hparam_differences(stored, {"backbone": {"class_path": VIT3D}}) == []
    assert resume_differences(stored, {"backbone": {"class_path": VIT3D}}, {}) == []
    assert hparam_differences(stored, {"backbone": {"class_path": VIT3D, "init_args": {"num_layers": 2}}})
    assert hparam_differences(stored, {"backbone": "medcl-vit-tiny"})


# ---------------------------------------------------------------------------- refusals
@pytest.mark.parametrize(
    "tower, match",
    [
        ({"class_path": "no_such_package.Tower"}, r"class_path 'no_such_package.Tower' could not be imported"),
        ({"class_path": "framework.backbone.towers.Nope"}, r"module 'framework.backbone.towers' has no 'Nope'"),
        ({"class_path": "Tower"}, r"expected a dotted path pkg.module.Class"),
        ({"class_path": "torch.nn.functional.relu"}, r"expected an nn.Module subclass"),
        ({"class_path": VIT3D, "init_args": {"no_such_argument": 1}}, r"invalid init_args"),
        ({"class_path": VIT3D, "init_args": {"patch_size": 5}}, r"image_size \[28, 28, 28\] expected multiples of patch_size=5"),
        ({"class_path": "test_custom_backbones.NoEmbedDim"}, r"attribute 'embed_dim' expected a positive integer, found no such attribute"),
        ({"class_path": VIT3D, "extra": 1}, r"unknown keys \['extra'\]"),
    ],
)
def test_bad_towers_are_refused_naming_the_class_path_or_attribute(tower, match):
    with pytest.raises(ValueError, match=match):
        CustomBackbone(tower)


def test_a_tower_without_a_text_side_has_no_prompt_embeddings():
    with pytest.raises(ValueError, match=r"has no text side \(encode_text\)"):
        CustomBackbone(SMALL_3D).encode_prompts(["a"])


def test_adapters_are_refused_on_a_custom_backbone():
    with pytest.raises(ValueError, match=r"lora needs an open_clip backbone.*set lora: null"):
        MedCLModel(backbone={"tower": SMALL_2D}, lora={"r": 4})
    with pytest.raises(ValueError, match=r"lora needs an open_clip backbone"):
        ContinualModule(backbone=SMALL_2D, lora={"r": 4})
    model = MedCLModel(backbone={"tower": SMALL_2D})
    with pytest.raises(ValueError, match=r"modality adapters \(LoRA, a new patch embedding\) need an open_clip backbone"):
        model.add_task(_spec(), adapter=AdapterSpec("pet", in_channels=2))
    with pytest.raises(ValueError, match=r"in_channels=2, but the custom tower .* takes 3 channel\(s\)"):
        model.add_task(_spec("pet_ct", in_channels=2))
    assert model.tasks == []


@pytest.mark.parametrize(
    "tower, spec, match",
    [
        (SMALL_3D, _spec(spatial_dims=2), r"spatial_dims=2, but the custom tower .* is 3D"),
        (SMALL_3D, _spec(kind="segmentation", spatial_dims=3), r"segmentation needs feature maps from forward_intermediates"),
        ({"class_path": "test_custom_backbones.TextTower"}, _spec(kind="segmentation", in_channels=3), r"has none"),
    ],
)
def test_tasks_a_tower_cannot_serve_are_refused_before_a_head_is_built(tower, spec, match):
    model = MedCLModel(backbone={"tower": tower})
    with pytest.raises(ValueError, match=match):
        model.add_task(spec)


@pytest.mark.parametrize("field, value", [("pretrained", "weights.pt"), ("image_size", 64)])
def test_open_clip_only_arguments_are_refused_for_a_custom_backbone(field, value):
    with pytest.raises(ValueError, match=rf"{field}={value!r} applies to open_clip backbones.*set {field}: null"):
        ContinualModule(backbone=SMALL_3D, **{field: value})


# ---------------------------------------------------------------------------- whole runs through the CLI
def _config(tmp_path: Path, experiment: str, backbone) -> Path:
    path = shrink_config(experiment, tmp_path / "run", train_subset=16, eval_subset=16, batch_size=8, train_batches=1)
    config = yaml.safe_load(path.read_text())
    config["model"]["init_args"].update(backbone=backbone, pretrained=None)
    config["data"]["init_args"]["domains"] = config["data"]["init_args"]["domains"][:1]
    if "epochs_per_experience" in config["model"]["init_args"]:
        config["model"]["init_args"]["epochs_per_experience"] = 1
    config["trainer"]["max_epochs"] = 1
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"] if "ReplayCallback" not in c["class_path"]]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


RUNS = [
    pytest.param("experiments/tasks/adrenalmnist3d.yaml", JointModule, "adrenalmnist3d", SMALL_3D, (2, 1, 28, 28, 28), id="3d-vit", marks=needs_3d),
    pytest.param("experiments/quickstart.yaml", ContinualModule, "bloodmnist", SMALL_2D, (2, 3, 28, 28), id="2d-timm"),
]


@pytest.mark.parametrize("experiment, paradigm, task, backbone, shape", RUNS)
def test_a_custom_backbone_trains_through_the_cli_and_its_checkpoint_reloads(experiment, paradigm, task, backbone, shape, tmp_path):
    config = _config(tmp_path, experiment, backbone)
    check_class_paths(["fit", "--config", str(config)])  # what `medcl fit` does first: the tower's class imports
    cli = run_cli(["fit", "--config", str(config)])
    assert isinstance(cli.model.model.backbone, CustomBackbone)
    assert cli.model.hparams.backbone == {"class_path": backbone["class_path"], "init_args": backbone["init_args"]}
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    stored = torch.load(last, map_location="cpu", weights_only=True)
    assert stored["medcl"]["architecture"] is None  # no open_clip architecture: the class_path rebuilds it
    assert any(k.startswith("model.backbone.tower.") for k in stored["state_dict"])

    reloaded = paradigm.load_from_checkpoint(last, map_location="cpu").eval()
    x = torch.randint(0, 256, shape, dtype=torch.uint8)
    with torch.no_grad():
        logits = reloaded.model(x, task)
        assert torch.equal(logits, cli.model.eval().model(x, task))  # the trained module's logits
    assert logits.shape == (2, reloaded.task_specs[task].num_classes)
    cli = run_cli(["test", "--config", str(config), "--ckpt_path", str(last)])  # the config matches the checkpoint
    assert f"test/{task}/acc" in cli.trainer.callback_metrics


def test_a_bad_backbone_class_path_in_a_config_is_named_before_parsing(tmp_path):
    config = _config(tmp_path, "experiments/quickstart.yaml", {"class_path": "my_towers.Missing"})
    with pytest.raises(ValueError, match=r"class_path 'my_towers.Missing' .*model.init_args.backbone.* could not be imported"):
        check_class_paths(["fit", "--config", str(config)])
    with pytest.raises(ValueError, match=r"backbone: class_path 'my_towers.Missing' could not be imported"):
        run_cli(["fit", "--config", str(config)])


@pytest.mark.slow
@needs_3d
def test_native_3d_benchmark_script_smoke(tmp_path):
    import json
    import subprocess
    import sys

    from conftest import REPO

    done = subprocess.run(
        [sys.executable, "native_3d.py", "--epochs", "1", "--train-subset", "32", "--flags", "adrenalmnist3d", "--results", str(tmp_path)],
        cwd=REPO / "benchmarks", capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "native_3d.json").read_text())
    runs = result["runs"]["adrenalmnist3d"]
    assert len(runs) == 2 and all(r["seconds_per_train_epoch"] > 0 and 0 <= r["test_auc"] <= 1 for r in runs.values())
    assert result["setup"]["torch_threads"] >= 1 and result["setup"]["cpu"]
    assert "| adrenalmnist3d | native 3D" in (tmp_path / "native_3d.md").read_text()
