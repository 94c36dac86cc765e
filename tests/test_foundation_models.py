"""Bring your own foundation model: hf-hub / local-dir / local-file backbones train offline, and a
checkpoint is self-contained (it reloads on a machine without the model folder, cache or file).

The hub model is a faithful replica of BiomedCLIP (tests/replicas.py: its real open_clip_config.json
layout, shrunk towers, random weights) in a local folder or a filled Hugging Face cache."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from framework.backbone import CLIPBackbone
from framework.backbone.architecture import _FROM_CHECKPOINTS, resolve_architecture
from framework.cli import run_cli
from framework.paradigms import ContinualModule
from helpers import shrink_config
from replicas import BIOMEDCLIP_REPO_ID, BIOMEDCLIP_TEXT_HUB_ID, fill_hf_cache, make_local_dir_replica, offline_hf_env, use_hf_cache


def _tensors_equal(module: torch.nn.Module, weights: dict, prefix: str = "") -> bool:
    state = module.state_dict()
    return all(torch.equal(state[prefix + k], v) for k, v in weights.items() if prefix + k in state)


@pytest.fixture(scope="module")
def replica(tmp_path_factory):
    return make_local_dir_replica(tmp_path_factory.mktemp("biomedclip") / "BiomedCLIP")


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    """An empty MedCL cache, and no architecture remembered from an earlier checkpoint."""
    monkeypatch.setenv("MEDCL_CACHE", str(tmp_path / "medcl-cache"))
    monkeypatch.setattr("framework.backbone.architecture._FROM_CHECKPOINTS", {})
    return tmp_path / "medcl-cache"


def _weights(replica: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(replica / "open_clip_model.safetensors"))


def test_local_dir_backbone_has_the_models_own_tokenizer_preprocessing_and_weights(replica, fresh_cache):
    config = json.loads((replica / "open_clip_config.json").read_text())
    backbone = CLIPBackbone(f"local-dir:{replica}")
    assert backbone.embed_dim == config["model_cfg"]["embed_dim"]
    assert backbone.image_size == (config["model_cfg"]["vision_cfg"]["image_size"],) * 2
    assert backbone.tokenizer.context_length == config["model_cfg"]["text_cfg"]["context_length"] == 256
    assert backbone.pixel_std.flatten().tolist() == pytest.approx(config["preprocess_cfg"]["std"])
    assert _tensors_equal(backbone.clip, _weights(replica))
    assert backbone.encode_prompts(["a microscopy image of a neutrophil"]).shape == (1, 512)


def test_an_architecture_only_backbone_is_random_until_load_pretrained(replica, fresh_cache):
    backbone = CLIPBackbone(f"local-dir:{replica}", load_weights=False)
    assert not _tensors_equal(backbone.clip, _weights(replica))
    assert backbone.load_pretrained() == str(replica / "open_clip_model.safetensors")
    assert _tensors_equal(backbone.clip, _weights(replica))


def test_hf_hub_backbone_loads_from_a_filled_cache_offline(tmp_path, monkeypatch, fresh_cache):
    hub = tmp_path / "hf" / "hub"
    fill_hf_cache(hub, weights_format="safetensors")
    use_hf_cache(monkeypatch, hub)
    backbone = CLIPBackbone(f"hf-hub:{BIOMEDCLIP_REPO_ID}")
    assert backbone.tokenizer.context_length == 256
    assert backbone.architecture.weights is not None and Path(backbone.architecture.weights).name == "open_clip_model.safetensors"
    from safetensors.torch import load_file

    assert _tensors_equal(backbone.clip, load_file(backbone.architecture.weights))


def test_pretrained_accepts_hf_hub_and_local_dir_weights(replica, tmp_path, monkeypatch, fresh_cache):
    hub = tmp_path / "hf" / "hub"
    fill_hf_cache(hub, weights_format="safetensors", seed=7)
    use_hf_cache(monkeypatch, hub)
    from_folder = CLIPBackbone(f"local-dir:{replica}", pretrained=f"hf-hub:{BIOMEDCLIP_REPO_ID}")
    assert not _tensors_equal(from_folder.clip, _weights(replica))  # the hub's weights (seed 7), not the folder's
    copy = shutil.copytree(replica, tmp_path / "copy")
    again = CLIPBackbone(f"hf-hub:{BIOMEDCLIP_REPO_ID}", pretrained=f"local-dir:{copy}")
    assert _tensors_equal(again.clip, _weights(replica))


@pytest.mark.parametrize(
    "value, error, match",
    [
        ("local-dir:/nonexistent/model", FileNotFoundError, "folder not found: /nonexistent/model"),
        ("hf-hub:nobody/not-cached", RuntimeError, "open_clip_config.json of 'nobody/not-cached' could not be read"),
        ("ViT-Nonexistent", ValueError, "unknown open_clip architecture"),
    ],
)
def test_unavailable_backbones_are_refused_naming_them(value, error, match, tmp_path, monkeypatch, fresh_cache):
    use_hf_cache(monkeypatch, tmp_path / "empty-hub")
    with pytest.raises(error, match=match):
        CLIPBackbone(value)


def test_a_local_dir_without_open_clip_config_is_refused(tmp_path, fresh_cache):
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"open_clip_config.json not found .*found \['weights.bin'\]"):
        CLIPBackbone(f"local-dir:{tmp_path / 'model'}")


def test_a_hub_folder_naming_its_text_tower_by_hub_id_needs_it_in_the_cache(tmp_path, monkeypatch, fresh_cache):
    folder = make_local_dir_replica(tmp_path / "downloaded", text_source="hub")
    use_hf_cache(monkeypatch, tmp_path / "empty-hub")
    with pytest.raises(RuntimeError, match=f"text tower '{BIOMEDCLIP_TEXT_HUB_ID}'.*not available offline"):
        CLIPBackbone(f"local-dir:{folder}")
    hub = tmp_path / "hf" / "hub"
    fill_hf_cache(hub)
    use_hf_cache(monkeypatch, hub)
    assert CLIPBackbone(f"local-dir:{folder}").tokenizer.context_length == 256


# ---------------------------------------------------------------------------- whole runs, relocated checkpoints
def _config(tmp_path: Path, backbone: str, pretrained=None) -> Path:
    path = shrink_config("experiments/quickstart.yaml", tmp_path / "run", train_subset=16, eval_subset=16, batch_size=8, train_batches=1)
    config = yaml.safe_load(path.read_text())
    config["model"]["init_args"].update(backbone=backbone, pretrained=pretrained, epochs_per_experience=1)
    config["data"]["init_args"]["domains"] = config["data"]["init_args"]["domains"][:1]
    config["trainer"]["max_epochs"] = 1
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"] if "ReplayCallback" not in c["class_path"]]
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _run_elsewhere(code: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("route", ["local-dir", "hf-hub", "local-file"])
def test_a_run_from_a_foundation_model_trains_and_its_relocated_checkpoint_reloads_without_it(route, tmp_path, monkeypatch, fresh_cache):
    replica = make_local_dir_replica(tmp_path / "BiomedCLIP")
    if route == "local-dir":
        backbone, pretrained, weights = f"local-dir:{replica}", None, _weights(replica)
    elif route == "hf-hub":  # a filled Hugging Face cache, offline; emptied before the reload below
        hub = tmp_path / "hf" / "hub"
        snapshot = fill_hf_cache(hub, weights_format="safetensors", seed=3)
        use_hf_cache(monkeypatch, hub)
        from safetensors.torch import load_file

        backbone, pretrained, weights = f"hf-hub:{BIOMEDCLIP_REPO_ID}", None, load_file(str(snapshot / "open_clip_model.safetensors"))
    else:  # a plain architecture name and a weights file of it (the file is gone on the other machine)
        torch.manual_seed(123)
        weights = CLIPBackbone("medcl-vit-tiny").clip.state_dict()
        torch.save(weights, tmp_path / "weights.pt")
        backbone, pretrained = "medcl-vit-tiny", str(tmp_path / "weights.pt")
    config = _config(tmp_path, backbone, pretrained)
    cli = run_cli(["fit", "--config", str(config)])
    run_dir = Path(cli.trainer.log_dir)
    last = run_dir / "checkpoints" / "last.ckpt"
    stored = torch.load(last, map_location="cpu", weights_only=True)
    assert stored["medcl"]["architecture"]["name"] == backbone
    if route != "local-file":
        assert stored["medcl"]["architecture"]["model_cfg"]["text_cfg"]["context_length"] == 256
        assert "tokenizer.json" in stored["medcl"]["architecture"]["files"]
    # the run started from the pretrained weights: the frozen text tower still holds them
    text_keys = [k for k in weights if not k.startswith(("visual.", "logit_"))]
    assert text_keys and all(torch.equal(stored["state_dict"][f"model.backbone.clip.{k}"], weights[k]) for k in text_keys)

    # another machine: the checkpoint moved, no model folder, no weights file, an empty MedCL cache
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    moved = Path(shutil.copy(last, elsewhere / "model.ckpt"))
    shutil.rmtree(replica)
    shutil.rmtree(tmp_path / "hf", ignore_errors=True)
    (tmp_path / "weights.pt").unlink(missing_ok=True)
    from framework.sharing import strip_exemplars

    strip_exemplars(moved, elsewhere / "shared.ckpt")  # a medcl-share copy
    env = offline_hf_env(tmp_path / "empty-hub", base=os.environ)
    env.update(MEDCL_CACHE=str(elsewhere / "cache"), PYTHONPATH=str(REPO))
    code = f"""
import sys, torch
sys.argv = ["medcl"]
from framework.paradigms import ContinualModule
from framework.cli import run_cli
module = ContinualModule.load_from_checkpoint({str(moved)!r}, map_location="cpu")
x = torch.randint(0, 255, (2, 3, 28, 28), dtype=torch.uint8)
print("LOGITS", tuple(module.model(x, "bloodmnist").shape))
shared = ContinualModule.load_from_checkpoint({str(elsewhere / "shared.ckpt")!r}, map_location="cpu")
module.eval(), shared.eval()
print("SHARED SAME", torch.equal(module.model(x, "bloodmnist"), shared.model(x, "bloodmnist")))
cli = run_cli(["test", "--config", {str(config)!r}, "--ckpt_path", {str(moved)!r}])
print("ACC", float(cli.trainer.callback_metrics["test/bloodmnist/acc"]))
cli = run_cli(["predict", "--config", {str(config)!r}, "--ckpt_path", {str(moved)!r}])
print("PREDICTED")
"""
    result = _run_elsewhere(code, REPO, env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "LOGITS (2, 8)" in result.stdout and "SHARED SAME True" in result.stdout and "PREDICTED" in result.stdout
    assert list((tmp_path / "run").rglob("predictions/bloodmnist/predictions.csv"))


def test_init_from_a_relocated_checkpoint_grows_it_without_the_original_model(tmp_path, monkeypatch, fresh_cache):
    replica = make_local_dir_replica(tmp_path / "BiomedCLIP")
    config = _config(tmp_path, f"local-dir:{replica}")
    cli = run_cli(["fit", "--config", str(config)])
    moved = Path(shutil.copy(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt", tmp_path / "moved.ckpt"))
    shutil.rmtree(replica)
    _FROM_CHECKPOINTS.clear()
    grow = yaml.safe_load(config.read_text())
    grow["model"]["init_args"]["init_from"] = str(moved)
    grow["data"]["init_args"]["domains"][0]["init_args"]["flag"] = "organamnist"
    grow["trainer"]["default_root_dir"] = str(tmp_path / "grown")
    config.write_text(yaml.safe_dump(grow, sort_keys=False))
    monkeypatch.setenv("MEDCL_CACHE", str(tmp_path / "another-cache"))
    cli = run_cli(["fit", "--config", str(config)])
    assert list(cli.model.task_specs) == ["bloodmnist", "organamnist"]


def test_a_checkpoint_never_reads_the_pretrained_file_again(tmp_path, fresh_cache):
    replica = make_local_dir_replica(tmp_path / "BiomedCLIP")
    module = ContinualModule(backbone=f"local-dir:{replica}")
    module.load_pretrained()
    assert module.weights_ready
    path = tmp_path / "m.ckpt"
    import pytorch_lightning as pl

    trainer = pl.Trainer(logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    shutil.rmtree(replica)
    reloaded = ContinualModule.load_from_checkpoint(path, map_location="cpu")
    assert reloaded.weights_ready  # setup() will not load pretrained weights over the checkpoint's
    state = reloaded.state_dict()
    assert all(torch.equal(state[k], v) for k, v in module.state_dict().items())
    # the checkpoint's architecture served this reload only: a fresh model of that name builds from its source
    from framework.backbone import architecture

    assert architecture._FROM_CHECKPOINTS == {}
    with pytest.raises(FileNotFoundError, match="folder not found"):
        resolve_architecture(f"local-dir:{replica}")


@pytest.mark.slow
def test_biomedclips_real_architecture_builds_and_trains_one_step(tmp_path, fresh_cache):
    """ViT-B/16 at 224 px + BERT-base (vocab 30522, context 256), random weights: one optimizer step."""
    from framework.core.specs import TaskSpec
    from framework.model import MedCLModel

    folder = make_local_dir_replica(tmp_path / "BiomedCLIP-full", shrink=False, with_weights=False)
    torch.manual_seed(0)
    model = MedCLModel(backbone={"model_name": f"local-dir:{folder}", "freeze_text_tower": True})
    assert sum(p.numel() for p in model.backbone.parameters()) > 190e6
    assert model.backbone.tokenizer.context_length == 256 and model.backbone.image_size == (224, 224)
    model.add_task(TaskSpec(name="t", kind="classification", class_names=("benign", "malignant"), image_size=(224, 224)))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    images, target = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8), torch.tensor([0, 1])
    before = model.backbone.clip.visual.trunk.patch_embed.proj.weight.detach().clone()
    loss = model.head("t").loss(model(images, "t"), target)
    loss.backward()
    optimizer.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.backbone.clip.visual.trunk.patch_embed.proj.weight)
