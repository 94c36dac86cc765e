"""Growing a trained model: init_from, freezing, evaluation-only domains, the UNICON staircase,
the docs/adding_a_modality.md example, and the errors around them."""
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO, SHARED_MEDMNIST
from framework.cli import check_class_paths, main, run_cli
from framework.paradigms import ContinualModule, JointModule
from helpers import shrink_config, shrink_stages

pytestmark = pytest.mark.slow
OLD = ["bloodmnist", "organamnist"]
EXAMPLE = REPO / "docs" / "examples" / "chest_xray"
UNICON = ["01_ct_classification", "02_prognosis", "03_segmentation", "04_new_modality", "04b_ct_only_baseline"]
needs_shared = pytest.mark.skipif(not (SHARED_MEDMNIST / "pneumoniamnist.npz").is_file(), reason="needs ../shared/data")


@pytest.fixture(scope="module")
def quickstart_ckpt(tmp_path_factory):
    """The quickstart's 2-domain model (BloodMNIST -> OrganAMNIST), shrunk and trained once."""
    out = tmp_path_factory.mktemp("quickstart")
    config = shrink_config("experiments/quickstart.yaml", out, train_subset=64, eval_subset=60)
    cli = run_cli(["fit", "--config", str(config)])
    return Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def _base_weights(state_dict):
    """Backbone and head weights under their names before peft wrapped layers (``.base_layer``)."""
    return {
        k.replace(".base_layer", ""): v for k, v in state_dict.items()
        if k.startswith(("model.heads.", "model.backbone.")) and "lora_" not in k and "per_modality" not in k
    }


def _grow_config(tmp_path, ckpt, freeze="backbone+old_heads"):
    """The docs example config (user package xray_data), shrunk, growing ``ckpt``."""
    config = yaml.safe_load(shrink_config(EXAMPLE / "grow_quickstart.yaml", tmp_path, train_subset=64, eval_subset=60).read_text())
    config["model"]["init_args"].update(init_from=str(ckpt), freeze=freeze)
    path = tmp_path / "grow.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


@needs_shared
def test_grow_quickstart_checkpoint_into_a_third_domain(quickstart_ckpt, tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))  # the user's package, as PYTHONPATH in the docs
    cli = run_cli(["fit", "--config", str(_grow_config(tmp_path, quickstart_ckpt))])
    module = cli.model
    assert list(module.task_specs) == [*OLD, "chest_xray"]
    assert module.initial_tasks == OLD
    # the trainable-parameter count of the experience: frozen backbone, the new LoRA and head only
    counts = module.trainable_counts[0]
    head = sum(p.numel() for p in module.model.head("chest_xray").parameters())
    lora = sum(p.numel() for p in module.model.adapters.parameters("x-ray"))
    assert counts["backbone"] == 0 and counts["heads"] == head and counts["adapters"] == lora > 0
    # one matrix: a start row (old tasks before training), then the new experience; old tasks re-tested
    result = json.loads((Path(cli.trainer.log_dir) / "continual_metrics.json").read_text())
    assert result["tasks"] == [*OLD, "chest_xray"] and result["experiences"] == [-1, 0]
    start, after = result["accuracy_matrix"]
    assert after[:2] == pytest.approx(start[:2], abs=1e-9)
    assert result["forgetting"] == pytest.approx(0.0, abs=1e-9)
    # frozen means frozen: the backbone and old heads are bit-identical to the quickstart's
    before = _base_weights(_load(quickstart_ckpt)["state_dict"])
    grown = _load(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt")
    after_weights = _base_weights(grown["state_dict"])
    assert set(before) <= set(after_weights)
    for key, value in before.items():
        assert torch.equal(after_weights[key], value), key
    meta = grown["medcl"]
    assert [t["name"] for t in meta["tasks"]] == [*OLD, "chest_xray"] and meta["initial_tasks"] == OLD
    assert meta["adapters"]["chest_xray"]["modality"] == "x-ray" and meta["adapters"]["chest_xray"]["lora"]["r"] == 8


@needs_shared
def test_without_freezing_old_tasks_move(quickstart_ckpt, tmp_path, monkeypatch):
    """The control for the test above: with freeze: none the same run changes the old weights."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    cli = run_cli(["fit", "--config", str(_grow_config(tmp_path, quickstart_ckpt, freeze="none"))])
    before = _base_weights(_load(quickstart_ckpt)["state_dict"])
    grown = _base_weights(_load(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt")["state_dict"])
    key = "model.backbone.clip.visual.transformer.resblocks.0.mlp.c_fc.weight"
    assert not torch.equal(grown[key], before[key])
    assert cli.model.trainable_counts[0]["backbone"] > 0


def test_init_from_refuses_files_that_are_not_medcl_checkpoints(tmp_path):
    module = ContinualModule(init_from=str(tmp_path / "missing.ckpt"))
    with pytest.raises(FileNotFoundError, match="missing.ckpt"):
        module.load_initial_model(tmp_path / "missing.ckpt")
    text = tmp_path / "notes.ckpt"
    text.write_text("not a checkpoint")
    with pytest.raises(ValueError, match=r"init_from .*notes\.ckpt.*expected a PyTorch checkpoint"):
        ContinualModule().load_initial_model(text)
    weights = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2)}, weights)
    with pytest.raises(ValueError, match=r"weights\.pt.*not a MedCL checkpoint.*'medcl' entry.*found \['conv.weight'\]"):
        ContinualModule().load_initial_model(weights)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"backbone": "medcl-resnet18-tiny"}, "backbone: checkpoint 'medcl-vit-tiny', config 'medcl-resnet18-tiny'"),
     ({"image_size": 32}, r"image_size: checkpoint None \(the architecture's 28 px\), config 32 \(the tower's native size; a task's own input size is its data module's image_size")],
)
def test_init_from_refuses_a_checkpoint_whose_backbone_differs(quickstart_ckpt, kwargs, field):
    head_args = {"classification": {"learn_class_embeddings": True}}
    with pytest.raises(ValueError, match=f"init_from .*differs from this configuration.*{field}"):
        ContinualModule(head_args=head_args, **kwargs).load_initial_model(quickstart_ckpt)


def test_init_from_loads_into_another_shared_model_paradigm(quickstart_ckpt):
    module = JointModule(head_args={"classification": {"learn_class_embeddings": True}})
    module.load_initial_model(quickstart_ckpt)
    assert list(module.task_specs) == OLD and module.initial_tasks == OLD


def test_ckpt_path_with_another_backbone_or_paradigm_is_refused(quickstart_ckpt, tmp_path, capsys, monkeypatch):
    config = shrink_config("experiments/quickstart.yaml", tmp_path, train_subset=32, eval_subset=32)
    with pytest.raises(ValueError, match=r"--ckpt_path .*backbone: checkpoint 'medcl-vit-tiny', config 'medcl-resnet18-tiny'.*init_from"):
        run_cli(["fit", "--config", str(config), "--model.init_args.backbone", "medcl-resnet18-tiny", "--ckpt_path", str(quickstart_ckpt)])
    with pytest.raises(ValueError, match=r"paradigm: checkpoint framework.paradigms.ContinualModule, config framework.paradigms.JointModule"):
        run_cli(["test", "--config", str(config), "--model", "framework.paradigms.JointModule", "--ckpt_path", str(quickstart_ckpt)])
    # through the console script: one line
    monkeypatch.setattr("sys.argv", ["medcl", "test", "--config", str(config), "--model.init_args.backbone", "medcl-resnet18-tiny", "--ckpt_path", str(quickstart_ckpt)])
    with pytest.raises(SystemExit):
        main()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and err[0].startswith("medcl: error: ValueError: --ckpt_path")


def test_an_evaluation_only_domain_must_be_a_task_of_the_model(tmp_path):
    config = yaml.safe_load(shrink_config("experiments/quickstart.yaml", tmp_path, train_subset=32, eval_subset=32).read_text())
    domains = config["data"]["init_args"]["domains"]
    config["data"]["init_args"].update(domains=domains[:1], eval_domains=domains[1:])
    config["model"]["init_args"]["epochs_per_experience"] = 1
    config["trainer"]["max_epochs"] = 1
    path = tmp_path / "eval_only.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"evaluation-only domain 'organamnist' is not a task of the model"):
        run_cli(["fit", "--config", str(path)])


def test_unimportable_class_path_is_named_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "xray_data", raising=False)  # imported by an earlier test
    config = yaml.safe_load((EXAMPLE / "grow_quickstart.yaml").read_text())
    path = tmp_path / "grow.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=r"class_path 'xray_data.ChestXrayDataModule' \(.*grow.yaml: data.init_args.domains\[0\]\) could not be imported: No module named 'xray_data'.*PYTHONPATH"):
        check_class_paths(["--config", str(path)])
    monkeypatch.setattr("sys.argv", ["medcl", "fit", "--config", str(path)])
    with pytest.raises(SystemExit):
        main()
    assert capsys.readouterr().err.startswith("medcl: error: ValueError: class_path 'xray_data.ChestXrayDataModule'")
    # importable from the folder medcl runs in, as the docs say
    monkeypatch.chdir(EXAMPLE)
    monkeypatch.syspath_prepend(str(EXAMPLE))
    check_class_paths(["--config", str(path)])


@needs_shared
def test_unicon_staircase_grows_one_model_and_keeps_old_tasks(tmp_path):
    from framework.stages import main as stages_main

    paths = shrink_stages([REPO / "experiments" / "unicon" / f"{n}.yaml" for n in UNICON], tmp_path, train_subset=64, eval_subset=64)
    stages_main([str(p) for p in paths[:4]] + ["--alternatives", str(paths[4]), "--output", str(tmp_path / "out")])
    table = json.loads((tmp_path / "out" / "stages.json").read_text())["table"]
    assert [r["stage"] for r in table["rows"]] == UNICON and [r["alternative"] for r in table["rows"]] == [False] * 4 + [True]
    assert table["tasks"][:4] == ["organamnist", "organa_survival_semisynthetic", "kvasir_seg", "ct_pet_lesion_semisynthetic"]
    assert table["metrics"]["kvasir_seg"] == "dice" and table["metrics"]["organa_survival_semisynthetic"] == "c_index"
    # backbone and old heads frozen: every old task keeps its score (the issue allows 0.5 points)
    assert set(table["max_change"]) == {"organamnist", "organa_survival_semisynthetic", "kvasir_seg"}
    assert max(table["max_change"].values()) <= 0.005
    assert (tmp_path / "out" / "stages.md").read_text().count("\n| ") == 5  # one table line per row
    assert "04_new_modality vs alternative 04b_ct_only_baseline: ct_pet_lesion_semisynthetic dice" in (tmp_path / "out" / "stages.md").read_text()
    before = (tmp_path / "out" / "stages.md").read_text()
    stages_main(["--table-only", "--output", str(tmp_path / "out")])  # re-renders the saved results
    assert (tmp_path / "out" / "stages.md").read_text() == before
    # stage 2 trains only the Cox head; stage 4 a new patch embedding, its LoRA and its decoder
    ckpts = tmp_path / "checkpoints"
    stage2 = ContinualModule.load_from_checkpoint(ckpts / "02_prognosis.ckpt", strict=True, map_location="cpu")
    assert table["rows"][1]["trainable_parameters"] == sum(p.numel() for p in stage2.model.head("organa_survival_semisynthetic").parameters())
    stage4 = ContinualModule.load_from_checkpoint(ckpts / "04_new_modality.ckpt", strict=True, map_location="cpu")
    adapters = stage4.model.adapters.specs
    assert set(adapters) == {"endoscopy", "pet_ct"} and adapters["pet_ct"].in_channels == 2 and adapters["pet_ct"].lora["r"] == 8
    assert stage4.initial_tasks == ["organamnist", "organa_survival_semisynthetic", "kvasir_seg"]
    # the grown checkpoint is self-contained: it reloads without the init_from file
    (ckpts / "03_segmentation.ckpt").unlink()
    again = ContinualModule.load_from_checkpoint(ckpts / "04_new_modality.ckpt", strict=True, map_location="cpu")
    x = torch.rand(2, 2, 28, 28)
    again.eval(), stage4.eval()
    assert torch.equal(again.model(x, "ct_pet_lesion_semisynthetic"), stage4.model(x, "ct_pet_lesion_semisynthetic"))


@needs_shared
def test_a_joint_batch_holding_several_modalities_trains_each_modality_adapter(tmp_path):
    """experiments/mixed/joint.yaml with LoRA: every batch holds CT and endoscopy sub-batches, each
    routed through its own modality's LoRA (which starts at zero and moves only through its own tasks)."""
    config = shrink_config("experiments/mixed/joint.yaml", tmp_path)
    cli = run_cli(["fit", "--config", str(config), "--model.init_args.lora", "{r: 4, alpha: 8}"])
    model = cli.model.model
    assert set(model.adapters.specs) == {"ct", "endoscopy"}
    for modality in ("ct", "endoscopy"):
        lora_b = [p for name, p in model.adapters.visual.named_parameters() if f"lora_B.{modality}." in name]
        assert lora_b and all(p.abs().sum() > 0 for p in lora_b), modality


@needs_shared
def test_grown_into_a_64px_segmentation_task_the_28px_quickstart_trains_it_at_64px(quickstart_ckpt, tmp_path):
    """The new task runs at its own size (64 px masks, decoder planned at 64), the old ones at 28 and
    unchanged; the start row does not score the untrained decoder (it is not a zero-shot score)."""
    config = yaml.safe_load(shrink_config("experiments/quickstart.yaml", tmp_path, train_subset=32, eval_subset=24, batch_size=8).read_text())
    old = config["data"]["init_args"]["domains"]
    config["data"]["init_args"]["domains"] = [{"class_path": "data_modules.SegmentationDataModule", "init_args": {
        "file": str(SHARED_MEDMNIST.parent / "segmentation" / "kvasir_seg_64.npz"), "task_name": "kvasir_seg", "label_names": ["polyp"],
        "modality": "endoscopy", "batch_size": 8, "eval_batch_size": 24, "train_subset": 32, "val_subset": 24, "test_subset": 24}}]
    config["data"]["init_args"]["eval_domains"] = old
    config["model"]["init_args"].update(init_from=str(quickstart_ckpt), freeze="backbone+old_heads", lora={"r": 4, "alpha": 8}, epochs_per_experience=1)
    config["model"]["init_args"]["head_args"]["segmentation"] = {"feature_size": 8}  # growth may set the new kind's head options
    config["trainer"]["max_epochs"] = 1
    config["trainer"]["callbacks"] = [c for c in config["trainer"]["callbacks"] if "ReplayCallback" not in c["class_path"]]
    path = tmp_path / "grow_seg.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = run_cli(["fit", "--config", str(path)])
    module = cli.model
    assert module.task_specs["kvasir_seg"].image_size == (64, 64) and module.task_specs["bloodmnist"].image_size == (28, 28)
    assert module.model.head("kvasir_seg").feature_size == 8
    assert module.model.backbone.image_size == (28, 28)  # the tower's native grid is the quickstart's
    seen = []
    stem = next(m for m in module.model.backbone.clip.visual.modules() if isinstance(m, torch.nn.Conv2d))  # the patch embedding
    stem.register_forward_pre_hook(lambda _m, args: seen.append(tuple(args[0].shape[-2:])))
    module.model.eval()
    assert module.model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), "kvasir_seg").shape == (1, 2, 64, 64)
    module.model(torch.zeros(1, 3, 28, 28, dtype=torch.uint8), "bloodmnist")
    assert seen == [(64, 64), (28, 28)]  # the tower ran at each task's size
    result = json.loads((Path(cli.trainer.log_dir) / "continual_metrics.json").read_text())
    assert result["tasks"] == [*OLD, "kvasir_seg"]
    start, after = result["accuracy_matrix"]
    assert start[2] is None and after[2] is not None  # no "zero-shot" Dice of a random decoder
    assert after[:2] == pytest.approx(start[:2], abs=1e-9)


def test_growing_may_add_head_options_for_a_new_kind_but_not_change_the_old_kinds():
    from framework.paradigms.base import hparam_differences

    stored = {"head_args": {"classification": {"learn_class_embeddings": True}}}
    added = {"head_args": {"classification": {"learn_class_embeddings": True}, "segmentation": {"feature_size": 8}}}
    changed = {"head_args": {"classification": {"learn_class_embeddings": False}}}
    assert hparam_differences(stored, added, stored_kinds={"classification"}) == []
    assert hparam_differences(stored, added) != []  # resuming (--ckpt_path) stays strict
    assert "head_args: checkpoint" in hparam_differences(stored, changed, stored_kinds={"classification"})[0]
