"""Trainer presets (experiments/trainer/*.yaml) and the stream's DataLoader settings.

* each preset, given after an experiment's config, sets the trainer and every domain's loader and
  leaves the experiment's domains, model and callbacks alone;
* ``DomainStream(loader=...)`` reaches every domain's DataLoader, and bad keys or values are refused.
"""
import pytest
import yaml

from conftest import REPO
from data_modules import DomainStream, MedMNISTDataModule
from framework.cli import run_cli
from helpers import load_config

PRESETS = {
    "cpu": {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "precision": "32-true"},
    "cpu_bf16": {"accelerator": "cpu", "devices": 1, "num_nodes": 1, "precision": "bf16-mixed"},
    "gpu": {"accelerator": "gpu", "devices": 1, "num_nodes": 1, "precision": "bf16-mixed"},
    "ddp": {"accelerator": "gpu", "devices": -1, "num_nodes": 1, "strategy": "ddp", "precision": "bf16-mixed"},
    "ddp_multinode": {"accelerator": "gpu", "devices": 4, "num_nodes": 2, "strategy": "ddp", "precision": "bf16-mixed"},
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_sets_the_trainer_and_loaders_after_an_experiment(preset, capsys):
    experiment = REPO / "experiments" / "quickstart.yaml"
    with pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(experiment), "--config", str(REPO / "experiments" / "trainer" / f"{preset}.yaml"), "--print_config"])
    merged = yaml.safe_load(capsys.readouterr().out)
    original = load_config(experiment)  # the callbacks it names by path, read in
    for key, value in PRESETS[preset].items():
        assert merged["trainer"][key] == value, key
    loader = merged["data"]["init_args"]["loader"]
    assert set(loader) == {"num_workers", "pin_memory", "persistent_workers"}
    assert loader["pin_memory"] == (not preset.startswith("cpu"))
    # the experiment itself is untouched: its domains, model and callbacks (cpu_bf16 appends the math attention kernel)
    assert [d["init_args"]["flag"] for d in merged["data"]["init_args"]["domains"]] == ["bloodmnist", "organamnist"]
    assert merged["model"]["init_args"]["epochs_per_experience"] == original["model"]["init_args"]["epochs_per_experience"]
    appended = ["framework.callbacks.AttentionKernel"] if preset == "cpu_bf16" else []
    assert [c["class_path"] for c in merged["trainer"]["callbacks"]] == [c["class_path"] for c in original["trainer"]["callbacks"]] + appended
    if appended:
        assert merged["trainer"]["callbacks"][-1]["init_args"]["backends"] == ["math"]


def _domain(task):
    return MedMNISTDataModule(flag=task, data_dir=str(REPO / "data/demo/medmnist"), train_subset=16, val_subset=8, test_subset=8, batch_size=8)


def test_stream_loader_settings_reach_every_domain():
    stream = DomainStream(domains=[_domain("bloodmnist")], known_tasks=[_domain("organamnist")],
                          loader={"num_workers": 2, "pin_memory": True, "persistent_workers": True})
    stream.setup("fit")
    for domain in (stream.domains[0], stream.known_tasks[0]):
        loader = domain.loader("test")
        assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (2, True, True)
    partial = DomainStream(domains=[_domain("bloodmnist")], loader={"pin_memory": True})
    partial.setup("fit")
    loader = partial.domains[0].loader("train", keyed=False)
    assert (loader.num_workers, loader.pin_memory, loader.persistent_workers) == (0, True, False)  # no workers: none to keep


@pytest.mark.parametrize("loader, message", [
    ({"workers": 2}, r"DomainStream: field 'loader' expected a mapping with keys from \['num_workers', 'persistent_workers', 'pin_memory'\], found \['workers'\]"),
    ({"num_workers": -1}, r"MedMNISTDataModule\(bloodmnist\): loader field 'num_workers' expected an integer >= 0, found -1"),
    ({"pin_memory": "yes"}, r"loader field 'pin_memory' expected true or false, found 'yes'"),
])
def test_bad_loader_settings_are_refused(loader, message):
    with pytest.raises(ValueError, match=message):
        DomainStream(domains=[_domain("bloodmnist")], loader=loader)
