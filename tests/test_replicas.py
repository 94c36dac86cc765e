"""Offline replicas of open_clip hub models (tests/replicas.py): ``local-dir:`` and ``hf-hub:`` loading
with no network, the real config layout, weights really read from the file."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

import replicas

PROMPTS = ["a microscopy image of a neutrophil", "a chest x-ray showing pneumothorax"]
HF_ID = "hf-hub:" + replicas.BIOMEDCLIP_REPO_ID


@pytest.fixture(scope="module")
def local_replica(tmp_path_factory):
    return replicas.make_local_dir_replica(tmp_path_factory.mktemp("biomedclip"))


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory):
    """A filled hub cache at ``.../hf/hub`` (so ``HF_HOME`` is its parent)."""
    cache = tmp_path_factory.mktemp("hf") / "hub"
    replicas.fill_hf_cache(cache)
    return cache


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _build(name, seed, **kwargs):
    import open_clip

    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(name, **kwargs)
    return model.eval(), preprocess


def test_configs_have_the_hub_layout():
    full = replicas.biomedclip_full_config()
    assert full == {
        "model_cfg": {
            "embed_dim": 512,
            "vision_cfg": {"timm_model_name": "vit_base_patch16_224", "timm_model_pretrained": False,
                           "timm_pool": "", "timm_proj": "linear", "image_size": 224},
            "text_cfg": {"hf_model_name": replicas.BIOMEDCLIP_TEXT_HUB_ID,
                         "hf_tokenizer_name": replicas.BIOMEDCLIP_TEXT_HUB_ID, "hf_proj_type": "mlp",
                         "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073], "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    tiny = replicas.biomedclip_config(shrink=True)

    def layout(d):
        return {k: layout(v) if isinstance(v, dict) else type(v) for k, v in d.items()}

    assert layout(tiny) == layout(full)
    assert tiny["model_cfg"]["text_cfg"] == full["model_cfg"]["text_cfg"]
    bert = replicas.text_tower_config(shrink=False)
    assert (bert["vocab_size"], bert["hidden_size"], bert["num_hidden_layers"], bert["max_position_embeddings"]) == (30522, 768, 12, 512)
    assert replicas.text_tower_config(shrink=True).keys() == bert.keys()
    vocab = replicas.replica_vocab()
    assert vocab[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] and len(set(vocab)) == len(vocab) < 30522


def test_local_dir_replica_builds_encodes_and_tokenizes(local_replica):
    import open_clip

    config = json.loads((local_replica / "open_clip_config.json").read_text())
    assert config["model_cfg"]["text_cfg"]["hf_model_name"] == str(local_replica / "text_encoder")
    model, preprocess = _build(f"local-dir:{local_replica}", 0)
    tokenizer = open_clip.get_tokenizer(f"local-dir:{local_replica}")
    assert tokenizer.context_length == config["model_cfg"]["text_cfg"]["context_length"] == 256
    tokens = tokenizer(PROMPTS)
    assert tokens.shape == (2, 256) and tokens.max() < model.text.vocab_size
    assert (tokens[:, 1:6] != 1).all()  # words of the vocabulary, not [UNK]
    from PIL import Image

    image = preprocess(Image.new("RGB", (300, 200), (120, 30, 200))).unsqueeze(0)
    assert image.shape == (1, 3, replicas.TINY_IMAGE_SIZE, replicas.TINY_IMAGE_SIZE)
    with torch.no_grad():
        image_features, text_features = model.encode_image(image), model.encode_text(tokens)
    assert image_features.shape == (1, 512) and text_features.shape == (2, 512)
    assert torch.isfinite(image_features).all() and torch.isfinite(text_features).all()


def test_weights_come_from_the_file(local_replica):
    from safetensors.torch import load_file

    saved = load_file(str(local_replica / "open_clip_model.safetensors"))
    a, b = (_state(_build(f"local-dir:{local_replica}", seed)[0]) for seed in (1, 2))
    assert a.keys() == saved.keys()
    assert all(torch.equal(a[k], saved[k]) and torch.equal(b[k], saved[k]) for k in saved)


def test_one_training_step(local_replica):
    import open_clip

    model, _ = _build(f"local-dir:{local_replica}", 0)
    model.train()
    tokens = open_clip.get_tokenizer(f"local-dir:{local_replica}")(PROMPTS)
    images = torch.rand(2, 3, replicas.TINY_IMAGE_SIZE, replicas.TINY_IMAGE_SIZE)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    before = _state(model)
    image_features, text_features, logit_scale = model(images, tokens)
    loss = open_clip.ClipLoss()(image_features, text_features, logit_scale)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss)
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert {"visual", "text"} <= changed


def test_without_clip_weights_the_text_tower_weights_are_loaded(tmp_path):
    from safetensors.torch import load_file

    folder = replicas.make_local_dir_replica(tmp_path / "replica", with_weights=False)
    assert not list(folder.glob("*.safetensors"))
    model, _ = _build(f"local-dir:{folder}", 0)
    bert = load_file(str(folder / "text_encoder" / "model.safetensors"))
    assert torch.equal(model.text.transformer.embeddings.word_embeddings.weight,
                       bert["embeddings.word_embeddings.weight"])


def test_hf_hub_replica_in_process(hub_cache, monkeypatch):
    import open_clip

    replicas.use_hf_cache(monkeypatch, hub_cache)
    snapshot = next((hub_cache / ("models--" + replicas.BIOMEDCLIP_REPO_ID.replace("/", "--")) / "snapshots").iterdir())
    saved = torch.load(snapshot / "open_clip_pytorch_model.bin", weights_only=True)
    model, _ = _build(HF_ID, 3)
    state = _state(model)
    assert state.keys() == saved.keys() and all(torch.equal(state[k], saved[k]) for k in saved)
    tokenizer = open_clip.get_tokenizer(HF_ID)
    assert tokenizer.context_length == 256
    with torch.no_grad():
        text_features = model.encode_text(tokenizer(PROMPTS))
    assert text_features.shape == (2, 512) and torch.isfinite(text_features).all()


def test_local_dir_with_hub_text_tower_needs_the_cache(tmp_path, hub_cache, monkeypatch):
    """A folder downloaded from the hub keeps the text tower's hub id: offline it builds only from a filled cache."""
    folder = replicas.make_local_dir_replica(tmp_path / "replica", text_source="hub")
    assert not (folder / "text_encoder").exists()
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    replicas.use_hf_cache(monkeypatch, empty)
    with pytest.raises(OSError):
        _build(f"local-dir:{folder}", 0)
    replicas.use_hf_cache(monkeypatch, hub_cache)
    model, _ = _build(f"local-dir:{folder}", 0)
    assert model.text.config.hidden_size == replicas.text_tower_config(shrink=True)["hidden_size"]


@pytest.mark.slow
def test_hf_hub_replica_in_a_clean_offline_subprocess(tmp_path):
    """The environment alone (no patching) points huggingface_hub and transformers at the cache.

    Slow only for the fresh interpreter's imports (about 5 s); the in-process test covers the loading."""
    cache = tmp_path / "hf" / "hub"
    replicas.fill_hf_cache(cache, weights_format="safetensors")
    script = textwrap.dedent(f"""
        import torch, open_clip
        from huggingface_hub import constants
        assert constants.HF_HUB_OFFLINE and constants.HF_HUB_CACHE == {str(cache)!r}
        model, _, _ = open_clip.create_model_and_transforms({HF_ID!r})
        tokenizer = open_clip.get_tokenizer({HF_ID!r})
        with torch.no_grad():
            features = model.encode_text(tokenizer({PROMPTS!r}))
        print("OK", tokenizer.context_length, tuple(features.shape), bool(torch.isfinite(features).all()))
    """)
    base = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path / "home"), "PYTHONNOUSERSITE": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=replicas.offline_hf_env(cache, base=base),
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "OK 256 (2, 512) True" in proc.stdout
    assert not (tmp_path / "home").exists()  # nothing read from or written to a default cache


@pytest.mark.slow
def test_full_size_replica_has_the_real_architecture(tmp_path):
    import open_clip

    folder = replicas.make_local_dir_replica(tmp_path / "full", shrink=False, with_weights=False)
    model, preprocess = _build(f"local-dir:{folder}", 0, pretrained_text=False)
    assert type(model.visual.trunk).__name__ == "VisionTransformer"
    assert model.visual.trunk.embed_dim == 768 and len(model.visual.trunk.blocks) == 12
    bert = model.text.config
    assert (bert.vocab_size, bert.hidden_size, bert.num_hidden_layers, bert.max_position_embeddings) == (30522, 768, 12, 512)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert 190 < millions < 200, millions  # BiomedCLIP: ViT-B/16 86 M + PubMedBERT-base 109 M + projections
    tokens = open_clip.get_tokenizer(f"local-dir:{folder}")(PROMPTS[:1])
    assert tokens.shape == (1, 256)
    with torch.no_grad():
        image_features = model.encode_image(torch.rand(1, 3, 224, 224))
        text_features = model.encode_text(tokens)
    assert image_features.shape == text_features.shape == (1, 512)
    assert torch.isfinite(image_features).all() and torch.isfinite(text_features).all()
