"""Each task at its own input size: the image tower runs at the task's image_size (ViT position
embeddings resampled, convolutional towers as they are), data modules declare the size their images
come in, and checkpoints written before tasks declared sizes keep theirs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from data_modules import MedMNISTDataModule, SegmentationDataModule
from framework.backbone.resolution import check_input_size
from framework.model import MedCLModel
from framework.core.specs import TaskSpec
from replicas import make_local_dir_replica


@pytest.fixture(scope="module")
def timm_vit(tmp_path_factory):
    return f"local-dir:{make_local_dir_replica(tmp_path_factory.mktemp('bm') / 'BiomedCLIP')}"


def _tower_input_sizes(model: MedCLModel):
    """Record the (H, W) of every batch that enters the image tower's stem (its first convolution:
    pooled embeddings and the segmentation decoder's intermediates both pass it)."""
    seen = []
    stem = next(m for m in model.backbone.clip.visual.modules() if isinstance(m, torch.nn.Conv2d))
    stem.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    return seen


@pytest.mark.parametrize("tower", ["medcl-vit-tiny", "medcl-resnet18-tiny", "timm-vit"])
@pytest.mark.parametrize("size", [28, 64])
def test_a_task_runs_the_tower_at_its_own_size(tower, size, timm_vit):
    torch.manual_seed(0)
    model = MedCLModel(backbone={"model_name": timm_vit if tower == "timm-vit" else tower})
    model.add_task(TaskSpec(name="cls", kind="classification", class_names=("a", "b"), image_size=(size, size)))
    model.add_task(TaskSpec(name="seg", kind="segmentation", label_names=("polyp",), image_size=(size, size)))
    seen = _tower_input_sizes(model)
    images = torch.randint(0, 256, (2, 3, size, size), dtype=torch.uint8)
    assert model(images, "cls").shape == (2, 2)
    assert model(images, "seg").shape == (2, 2, size, size)
    expected = size if tower != "timm-vit" else -(-size // 16) * 16  # a ViT with 16-px patches: rounded up, never shrunk
    assert seen == [(expected, expected)] * 2  # the classification and the segmentation forward


def test_a_vit_task_at_another_size_uses_the_resampled_position_embedding():
    torch.manual_seed(0)
    model = MedCLModel(backbone={"model_name": "medcl-vit-tiny"})
    model.add_task(TaskSpec(name="big", kind="classification", class_names=("a", "b"), image_size=(56, 56)))
    images = torch.rand(2, 3, 56, 56)
    before = model(images, "big")
    with torch.no_grad():
        model.backbone.clip.visual.positional_embedding[1:] += torch.randn(49, 128)  # the native 7x7 grid's embedding
    assert not torch.allclose(before, model(images, "big"))


def test_tasks_at_different_sizes_share_one_tower_and_the_native_task_is_unchanged():
    torch.manual_seed(0)
    model = MedCLModel(backbone={"model_name": "medcl-vit-tiny"})
    native = TaskSpec(name="native", kind="classification", class_names=("a", "b"))
    model.add_task(native)
    images = torch.rand(2, 3, 28, 28)
    model.eval()
    before = model(images, "native")
    model.add_task(TaskSpec(name="seg64", kind="segmentation", label_names=("x",), image_size=(64, 64)))
    model(torch.rand(2, 3, 64, 64), "seg64")
    assert torch.equal(before, model(images, "native"))
    assert model.backbone.current_size == (28, 28)  # the size context ends with the forward pass


def test_a_fixed_size_attention_pool_is_refused_at_another_size():
    from open_clip.modified_resnet import ModifiedResNet

    tower = ModifiedResNet(layers=(1, 1, 1, 1), output_dim=32, heads=2, image_size=64, width=16)
    check_input_size(tower, (64, 64), (64, 64), "here")
    with pytest.raises(ValueError, match=r"image_size \[32, 32\] differs from the tower's \[64, 64\].*ModifiedResNet"):
        check_input_size(tower, (64, 64), (32, 32), "here")


def test_data_modules_declare_the_size_their_images_come_in(make_npz, tmp_path):
    assert MedMNISTDataModule("bloodmnist").task_spec.image_size == (28, 28)
    assert MedMNISTDataModule("bloodmnist", image_size=64).task_spec.image_size == (64, 64)
    rng = np.random.default_rng(0)
    path = tmp_path / "seg.npz"
    np.savez(path, images=rng.integers(0, 255, (6, 48, 40, 3), dtype=np.uint8), masks=rng.integers(0, 2, (6, 48, 40), dtype=np.uint8),
             split=np.array(["train"] * 4 + ["val", "test"]))
    assert SegmentationDataModule(file=str(path)).task_spec.image_size == (48, 40)
    with pytest.raises(ValueError, match="image_size expected null .* or an integer >= 8, found 4"):
        MedMNISTDataModule("bloodmnist", image_size=4)


@pytest.mark.parametrize("bad", [[28], [28, 28, 28], [4, 4], [28.0, 28]])
def test_a_task_spec_refuses_a_malformed_image_size(bad):
    with pytest.raises(ValueError, match="field 'image_size' expected empty or \\[height, width\\]"):
        TaskSpec(name="t", kind="classification", class_names=("a", "b"), image_size=bad)


def test_a_stored_task_without_a_size_matches_the_data_and_keeps_its_own():
    old = TaskSpec(name="t", kind="classification", class_names=("a", "b"))
    data = TaskSpec(name="t", kind="classification", class_names=("a", "b"), image_size=(28, 28))
    assert old.same_task(data) and not data.same_task(old.__class__(**{**data.to_dict(), "image_size": [32, 32]}))
    assert TaskSpec.from_dict({k: v for k, v in old.to_dict().items() if k != "image_size"}) == old
