"""Volumes in bounded memory (framework/backbone/slices.py, framework/callbacks/volume_memory.py).

* slices go through the tower in micro-batches of ``slice_batch_size``: the tower never sees more,
  and the result equals the one-batch pass (forward and gradients, with and without recomputation);
* slices larger than a 3D task's input are segmented window by window at full resolution (MONAI
  sliding windows), 2D images keep the resize default, and gradients flow through the windows;
* ``VolumeMemory`` sets the backbone from a config and refuses bad values.
"""
import pytest
import torch

from framework.backbone.slices import over_slices
from framework.callbacks import VolumeMemory
from framework.model import MedCLModel
from framework.core.specs import TaskSpec


def _spy(fn, seen):
    def wrapped(x):
        seen.append(tuple(x.shape))
        return fn(x)
    return wrapped


@pytest.mark.parametrize("batch, depth, chunk", [(1, 7, 1), (2, 7, 3), (2, 7, 4), (3, 5, 64)])
@pytest.mark.parametrize("checkpoint", [False, True])
def test_over_slices_equals_one_batch_and_bounds_the_micro_batch(batch, depth, chunk, checkpoint):
    torch.manual_seed(0)
    layer = torch.nn.Conv2d(2, 4, 3, padding=1)
    volumes = torch.randn(batch, 2, depth, 6, 5, requires_grad=True)
    reference = layer(volumes.transpose(1, 2).reshape(batch * depth, 2, 6, 5)).reshape(batch, depth, 4, 6, 5)
    ref_grads = torch.autograd.grad(reference.square().sum(), [volumes, layer.weight])
    seen = []
    out = over_slices(_spy(layer, seen), volumes, slice_batch_size=chunk, checkpoint=checkpoint)
    assert out.shape == (batch, depth, 4, 6, 5)
    torch.testing.assert_close(out, reference)
    grads = torch.autograd.grad(out.square().sum(), [volumes, layer.weight])
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want)
    forward_calls = seen[: -(len(seen) // 2)] if checkpoint else seen  # recomputation calls fn again in backward
    assert max(s[0] for s in seen) <= max(chunk, batch)
    assert sum(s[0] for s in forward_calls) == batch * depth


def _model(kind, spatial_dims, image_size=None, **head):
    torch.manual_seed(0)
    model = MedCLModel({"model_name": "medcl-vit-tiny"}, {"segmentation": {"feature_size": 8, **head}})
    spec = TaskSpec(name="organ", kind=kind, label_names=("organ",) if kind == "segmentation" else (),
                    class_names=("a", "b") if kind == "classification" else (), in_channels=1, spatial_dims=spatial_dims,
                    image_size=image_size or ())
    model.add_task(spec)
    return model.eval()


def test_volume_embedding_does_not_depend_on_the_micro_batch_size():
    model = _model("classification", 3)
    volumes = torch.rand(2, 1, 9, 28, 28)
    with torch.no_grad():
        model.backbone.slice_batch_size = 64
        whole = model.backbone.encode_image(volumes)
        model.backbone.slice_batch_size = 2
        seen = []
        model.backbone.clip.visual.forward = _spy(model.backbone.clip.visual.forward, seen)
        chunked = model.backbone.encode_image(volumes)
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=1e-4)
    assert max(s[0] for s in seen) == 2 and sum(s[0] for s in seen) == 18


def test_volume_segmentation_micro_batched_and_recomputed_equals_one_batch():
    model = _model("segmentation", 3)
    model.train()
    volumes = torch.rand(1, 1, 6, 28, 28)
    outputs, grads = [], []
    for size, recompute in ((64, False), (2, False), (2, True)):
        model.backbone.slice_batch_size, model.backbone.checkpoint_slices = size, recompute
        model.zero_grad()
        torch.manual_seed(1)
        logits = model(volumes, "organ")
        logits.square().mean().backward()
        outputs.append(logits.detach())
        grads.append(model.heads["organ"].out.conv.conv.weight.grad.clone())
    assert outputs[0].shape == (1, 2, 6, 28, 28)
    for out, grad in zip(outputs[1:], grads[1:]):
        torch.testing.assert_close(out, outputs[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(grad, grads[0], atol=1e-5, rtol=1e-4)


def test_large_volume_slices_are_segmented_window_by_window_at_full_resolution():
    model = _model("segmentation", 3, image_size=(16, 16))
    seen = []
    backbone = model.backbone
    backbone.forward_intermediates = _spy_intermediates(backbone.forward_intermediates, seen)
    volumes = torch.rand(1, 1, 3, 40, 32)
    with torch.no_grad(), backbone.input_size((16, 16)):
        logits = model.heads["organ"](backbone, volumes)
    assert logits.shape == (1, 2, 3, 40, 32)  # full resolution
    assert {s[-2:] for s in seen} == {(16, 16)}  # the tower only ever sees windows of the input size
    assert sum(s[0] for s in seen) > 3  # several windows per slice


def _spy_intermediates(fn, seen):
    def wrapped(images, *args, **kwargs):
        seen.append(tuple(images.shape))
        return fn(images, *args, **kwargs)
    return wrapped


def test_2d_images_keep_resizing_unless_sliding_windows_are_asked_for():
    for head, expected_sizes in (({}, {(16, 16)}), ({"large_slices": "sliding_window"}, {(16, 16)})):
        model = _model("segmentation", 2, image_size=(16, 16), **head)
        seen = []
        backbone = model.backbone
        backbone.forward_intermediates = _spy_intermediates(backbone.forward_intermediates, seen)
        with torch.no_grad(), backbone.input_size((16, 16)):
            logits = model.heads["organ"](backbone, torch.rand(2, 1, 40, 32))
        assert logits.shape == (2, 2, 40, 32)
        assert {s[-2:] for s in seen} == expected_sizes
        windows = sum(s[0] for s in seen)
        assert windows == 2 if not head else windows > 2


def test_gradients_flow_through_sliding_windows():
    model = _model("segmentation", 3, image_size=(16, 16))
    model.train()
    with model.backbone.input_size((16, 16)):
        logits = model.heads["organ"](model.backbone, torch.rand(1, 1, 2, 24, 24))
    logits.square().mean().backward()
    grad = model.heads["organ"].out.conv.conv.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.clip.visual.parameters())


def test_large_slices_options_are_validated():
    with pytest.raises(ValueError, match=r"large_slices expected null, 'sliding_window' or 'resize', found 'tile'"):
        _model("segmentation", 3, large_slices="tile")
    with pytest.raises(ValueError, match=r"window_overlap expected a number in \[0, 1\), found 1.0"):
        _model("segmentation", 3, window_overlap=1.0)


@pytest.mark.parametrize("kwargs, message", [
    ({"slice_batch_size": 0}, r"VolumeMemory: slice_batch_size expected a positive integer, found 0"),
    ({"slice_batch_size": True}, r"slice_batch_size expected a positive integer, found True"),
    ({"checkpoint_slices": "yes"}, r"VolumeMemory: checkpoint_slices expected true or false, found 'yes'"),
])
def test_volume_memory_refuses_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        VolumeMemory(**kwargs)


def test_volume_memory_sets_every_model_of_a_paradigm():
    from framework.paradigms import ContinualModule

    module = ContinualModule(backbone="medcl-vit-tiny")
    VolumeMemory(slice_batch_size=5, checkpoint_slices=True).setup(None, module, "fit")
    backbones = [m.backbone for m in module.all_models()]
    assert backbones and all(b.slice_batch_size == 5 and b.checkpoint_slices for b in backbones)
    with pytest.raises(ValueError, match=r"VolumeMemory: expected a MedCL paradigm module"):
        VolumeMemory().setup(None, torch.nn.Linear(1, 1), "fit")
