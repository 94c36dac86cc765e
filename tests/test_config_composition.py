"""Experiment files composed from shared pieces: ``config: <file>`` first, dotted keys on top, and
the run-folder placeholders MedCL fills (framework/config_includes.py, framework/config_placeholders.py).

The shipped experiments are checked in tests/test_configs.py; these tests pin the mechanism on
small files written here, including the two ways a composed file could lose settings silently.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
import yaml

from conftest import REPO
from helpers import load_config

from framework.cli import run_cli
from framework.config_placeholders import fill_placeholders, placeholder_values

BASE = """\
trainer:
  accelerator: cpu
  devices: 1
  log_every_n_steps: 7
  logger:
    - class_path: pytorch_lightning.loggers.CSVLogger
      init_args: {save_dir: "${run_parent}", name: "${run_name}"}
"""
MODEL = {
    "class_path": "framework.paradigms.ContinualModule",
    "init_args": {"backbone": "medcl-vit-tiny", "epochs_per_experience": 1},
}
DATA = {
    "class_path": "data_modules.DomainStream",
    "init_args": {"domains": [{"class_path": "data_modules.MedMNISTDataModule", "init_args": {
        "flag": "bloodmnist", "data_dir": str(REPO / "data" / "demo" / "medmnist"), "train_subset": 16, "val_subset": 16,
        "test_subset": 16, "batch_size": 8}}]},
}


def _write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _experiment(tmp_path: Path, head: str, tail: str = "") -> Path:
    _write(tmp_path, "trainer/base.yaml", BASE)
    body = yaml.safe_dump({"model": MODEL, "data": DATA}, sort_keys=False)
    return _write(tmp_path, "study/exp.yaml", head + body + tail)


def _printed(path: Path) -> dict:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        run_cli(["fit", "--config", str(path), "--print_config"])
    return yaml.safe_load(out.getvalue())


def test_included_settings_come_first_and_dotted_keys_change_single_ones(tmp_path):
    path = _experiment(tmp_path, "config: ../trainer/base.yaml\n", "trainer.max_epochs: 2\ntrainer.log_every_n_steps: 3\n"
                       f"trainer.default_root_dir: {tmp_path / 'runs' / 'study' / 'exp'}\n")
    trainer = _printed(path)["trainer"]
    assert (trainer["accelerator"], trainer["devices"], trainer["max_epochs"], trainer["log_every_n_steps"]) == ("cpu", 1, 2, 3)
    assert [logger["init_args"]["name"] for logger in trainer["logger"]] == ["${run_name}"]  # filled when the run starts
    inlined = load_config(path)["trainer"]  # tests/helpers.py reads it the same way
    assert {k: inlined[k] for k in ("accelerator", "max_epochs", "log_every_n_steps")} == {"accelerator": "cpu", "max_epochs": 2, "log_every_n_steps": 3}


def test_a_trainer_mapping_after_the_include_is_refused(tmp_path):
    # the parser would replace the whole trainer group: no accelerator, no loggers, without a word
    path = _experiment(tmp_path, "config: ../trainer/base.yaml\n", "trainer:\n  max_epochs: 2\n")
    with pytest.raises(ValueError, match=r"exp\.yaml: `trainer:` written as a mapping after `config: \.\./trainer/base\.yaml` "
                                         r"replaces every trainer setting .*`trainer\.<name>: <value>`"):
        _printed(path)


def test_keys_above_the_include_are_refused(tmp_path):
    path = _experiment(tmp_path, "seed_everything: 3\nconfig: ../trainer/base.yaml\n")
    with pytest.raises(ValueError, match=r"exp\.yaml: `config: \.\./trainer/base\.yaml` must be the first key: .* overwrite seed_everything"):
        _printed(path)


def test_a_missing_included_file_is_refused_naming_it(tmp_path):
    path = _experiment(tmp_path, "config: ../trainer/no_such.yaml\n")
    with pytest.raises(ValueError, match=r"exp\.yaml: `config:` names '\.\./trainer/no_such\.yaml', expected a YAML file relative to .*study"):
        _printed(path)
    with pytest.raises(FileNotFoundError, match=r"exp\.yaml: config: expected a YAML file '\.\./trainer/no_such\.yaml'"):
        load_config(path)


@pytest.mark.parametrize(
    "run_dir, expected",
    [
        ("runs/strategies/der", {"run_dir": "runs/strategies/der", "run_parent": "runs/strategies", "run_name": "der", "study": "strategies"}),
        ("runs/quickstart/", {"run_dir": "runs/quickstart", "run_parent": "runs", "run_name": "quickstart", "study": "runs"}),
        ("/abs/out", {"run_dir": "/abs/out", "run_parent": "/abs", "run_name": "out", "study": "abs"}),
    ],
)
def test_placeholder_values(run_dir, expected):
    assert placeholder_values(run_dir) == expected


@pytest.mark.parametrize("run_dir", ["", "/", "."])
def test_a_run_folder_without_a_name_is_refused(run_dir):
    with pytest.raises(ValueError, match="trainer.default_root_dir: expected a run folder such as runs/<study>/<name>"):
        placeholder_values(run_dir)


def test_unknown_placeholders_and_a_missing_run_folder_are_refused_naming_the_field():
    config = {"trainer": {"logger": [{"init_args": {"save_dir": "${run_folder}/x"}}]}}
    with pytest.raises(ValueError, match=r"trainer\.logger\[0\]\.init_args\.save_dir: unknown placeholder \$\{run_folder\} .* \$\{run_dir\}"):
        fill_placeholders(config, "runs/a/b")
    config = {"trainer": {"logger": [{"init_args": {"name": "${run_name}"}}]}}
    with pytest.raises(ValueError, match=r"trainer\.logger\[0\]\.init_args\.name: '\$\{run_name\}' uses \$\{run_name\}, .* not set"):
        fill_placeholders(config, None)
    assert fill_placeholders({"a": ["no placeholder", 3, None]}, None) == []  # nothing to fill: no run folder needed


def test_the_built_loggers_write_into_the_run_folder(tmp_path):
    root = tmp_path / "runs" / "study" / "exp"
    path = _experiment(tmp_path, "config: ../trainer/base.yaml\n", f"trainer.max_epochs: 1\ntrainer.default_root_dir: {root}\n")
    cli = run_cli(["--config", str(path)], run=False)
    (logger,) = cli.trainer.loggers
    assert Path(logger.log_dir) == root / "version_0"
    assert cli.config["trainer"]["logger"][0]["init_args"]["save_dir"] == str(root.parent)  # the saved config.yaml shows the values used


def test_class_paths_in_included_files_are_checked_naming_the_file(tmp_path):
    from framework.cli_checks import check_class_paths

    path = _experiment(tmp_path, "config: ../trainer/base.yaml\n")
    check_class_paths(["fit", "--config", str(path)])  # the shipped logger imports
    base = tmp_path / "trainer" / "base.yaml"
    base.write_text(base.read_text().replace("loggers.CSVLogger", "loggers.NoSuchLogger"))
    with pytest.raises(ValueError, match=r"class_path 'pytorch_lightning\.loggers\.NoSuchLogger' \(.*trainer/base\.yaml: trainer\.logger\[0\]\)"):
        check_class_paths(["fit", "--config", str(path)])
