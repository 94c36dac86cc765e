import open_clip
import pytest
import torch

from framework.backbone import CLIPBackbone, list_architectures

ARCHS = ["medcl-vit-tiny", "medcl-resnet18-tiny"]


@pytest.fixture(scope="module", params=ARCHS)
def backbone(request):
    torch.manual_seed(0)
    return CLIPBackbone(request.param)


def test_tiny_architectures_are_registered_with_open_clip():
    names = list_architectures()
    for arch in ARCHS:
        assert arch in names
        assert open_clip.get_model_config(arch)["embed_dim"] == 128


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 28), (3, 64), (1, 32)])
def test_pooled_embedding_shape_and_norm(backbone, channels, size):
    emb = backbone.encode_image(torch.rand(2, channels, size, size))
    assert emb.shape == (2, backbone.embed_dim)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_grayscale_equals_repeated_rgb(backbone):
    backbone.eval()
    gray = torch.rand(2, 1, 28, 28)
    assert torch.allclose(backbone.encode_image(gray), backbone.encode_image(gray.repeat(1, 3, 1, 1)), atol=1e-6)


@pytest.mark.parametrize("bad", [torch.rand(2, 2, 28, 28), torch.rand(2, 28, 28), torch.rand(2, 4, 28, 28)])
def test_bad_image_shapes_are_refused(backbone, bad):
    with pytest.raises(ValueError, match="CLIPBackbone: images expected"):
        backbone.encode_image(bad)


def test_multi_depth_features(backbone):
    feats = backbone.forward_intermediates(torch.rand(2, 3, 28, 28), indices=3)
    assert len(feats) == 3
    for f in feats:
        assert f.ndim == 4 and f.shape[0] == 2
    if backbone.model_name == "medcl-vit-tiny":  # patch 4 on 28 px -> 7x7 tokens of width 128
        assert [tuple(f.shape[1:]) for f in feats] == [(128, 7, 7)] * 3


def test_prompt_embeddings_cached_while_text_frozen(backbone):
    prompts = ["a CT slice of the liver", "a CT slice of the spleen"]
    first = backbone.encode_prompts(prompts)
    assert first.shape == (2, backbone.embed_dim)
    assert backbone.encode_prompts(prompts) is first  # served from the cache
    assert not first.requires_grad
    backbone.load_state_dict(backbone.state_dict())  # new weights invalidate the cache
    assert backbone.encode_prompts(prompts) is not first


def test_trainable_text_tower_is_not_cached_and_gets_gradients():
    bb = CLIPBackbone("medcl-vit-tiny", freeze_text_tower=False)
    a = bb.encode_prompts(["x ray"])
    assert a.requires_grad and bb.encode_prompts(["x ray"]) is not a
    a.sum().backward()
    assert bb.clip.token_embedding.weight.grad is not None


@pytest.mark.parametrize("freeze_image, freeze_text", [(True, True), (False, True), (True, False), (False, False)])
def test_freeze_options(freeze_image, freeze_text):
    bb = CLIPBackbone("medcl-vit-tiny", freeze_image_tower=freeze_image, freeze_text_tower=freeze_text)
    image_trainable = any(p.requires_grad for p in bb.clip.visual.parameters())
    text_trainable = bb.clip.token_embedding.weight.requires_grad
    assert image_trainable is (not freeze_image)
    assert text_trainable is (not freeze_text)
    assert not bb.clip.logit_scale.requires_grad  # heads own their temperature


def test_image_size_override():
    bb = CLIPBackbone("medcl-vit-tiny", image_size=64)
    assert bb.image_size == (64, 64)
    feats = bb.forward_intermediates(torch.rand(1, 3, 64, 64), indices=1)
    assert feats[0].shape[-2:] == (16, 16)


def test_pretrained_local_file_round_trip(tmp_path):
    torch.manual_seed(1)
    source = CLIPBackbone("medcl-vit-tiny")
    path = tmp_path / "weights.pt"
    torch.save(source.clip.state_dict(), path)
    torch.manual_seed(2)
    loaded = CLIPBackbone("medcl-vit-tiny", pretrained=str(path))
    for (name, a), b in zip(source.clip.state_dict().items(), loaded.clip.state_dict().values()):
        assert torch.equal(a, b), name
    fresh = CLIPBackbone("medcl-vit-tiny")
    assert not torch.equal(fresh.clip.visual.conv1.weight, source.clip.visual.conv1.weight)


def test_missing_pretrained_file_is_named(tmp_path):
    missing = tmp_path / "nope.safetensors"
    with pytest.raises(FileNotFoundError, match="nope.safetensors"):
        CLIPBackbone("medcl-vit-tiny", pretrained=str(missing))


def test_unknown_tag_lists_known_tags():
    with pytest.raises(ValueError, match="neither an existing file, hf-hub:org/repo, local-dir:/path nor a known tag"):
        CLIPBackbone("medcl-vit-tiny", pretrained="laion2b")


def test_unknown_architecture_is_refused():
    with pytest.raises(ValueError, match="unknown open_clip architecture"):
        CLIPBackbone("not-a-model")


def test_tag_that_cannot_download_explains_local_file(monkeypatch):
    def offline(*args, **kwargs):
        raise RuntimeError("Failed to download weights for tag 'openai': no network")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(RuntimeError, match="pass the local file: pretrained=/path/to"):
        CLIPBackbone("RN50", pretrained="openai")


# ---------------------------------------------------------------- uint8 images (served as-is by uint8 datasets)
def _uint8_and_float(*shape):
    images = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return images, images.float() / 255


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 28), (3, 40)])
def test_uint8_images_equal_float_images_divided_by_255(backbone, channels, size):
    backbone.eval()
    as_uint8, as_float = _uint8_and_float(2, channels, size, size)
    assert torch.equal(backbone.prepare_images(as_uint8), backbone.prepare_images(as_float))
    assert torch.allclose(backbone.encode_image(as_uint8), backbone.encode_image(as_float))
    for a, b in zip(backbone.forward_intermediates(as_uint8, indices=2), backbone.forward_intermediates(as_float, indices=2)):
        assert torch.allclose(a, b)


@pytest.mark.parametrize("size", [28, 56])  # 56 px: the sliding-window path of encode_volume
def test_uint8_volumes_equal_float_volumes(size):
    backbone = CLIPBackbone("medcl-vit-tiny").eval()
    as_uint8, as_float = _uint8_and_float(1, 1, 3, size, size)
    assert torch.allclose(backbone.encode_image(as_uint8), backbone.encode_image(as_float))


def test_uint8_images_take_the_model_float_dtype():
    backbone = CLIPBackbone("medcl-vit-tiny").to(torch.bfloat16).eval()
    as_uint8, as_float = _uint8_and_float(2, 1, 28, 28)
    prepared = backbone.prepare_images(as_uint8)
    assert prepared.dtype == torch.bfloat16
    assert torch.equal(backbone.encode_image(as_uint8), backbone.encode_image(as_float.to(torch.bfloat16)))


@pytest.mark.parametrize("arch, channels, spatial_dims", [
    ("medcl-vit-tiny", 3, 2), ("medcl-resnet18-tiny", 1, 2), ("medcl-vit-tiny", 2, 2), ("medcl-vit-tiny", 1, 3),
])
def test_uint8_segmentation_logits_equal_float(arch, channels, spatial_dims):
    """Every image path of the heads (skip connection, adapters' patch embedding, volumes) accepts uint8."""
    from framework.model import MedCLModel
    from framework.core.specs import TaskSpec

    torch.manual_seed(0)
    model = MedCLModel({"model_name": arch})
    model.add_task(TaskSpec(name="seg", kind="segmentation", label_names=["a"], in_channels=channels, spatial_dims=spatial_dims))
    model.add_task(TaskSpec(name="cls", kind="classification", class_names=["x", "y"], in_channels=channels, spatial_dims=spatial_dims))
    model.eval()
    as_uint8, as_float = _uint8_and_float(2, channels, *([4] if spatial_dims == 3 else []), 28, 28)
    with torch.no_grad():
        for task in ("seg", "cls"):
            assert torch.allclose(model(as_uint8, task), model(as_float, task))
