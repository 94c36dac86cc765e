"""Reliability II (issue 21): a diverged run is never a result; one run = one folder and one W&B run;
a failed run removes only its own output; a resumed run cannot change what it computes; a
finished stage's checkpoint survives a killed re-run; class paths at unknown keys are never imported.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Tuple

import pytest
import torch
import yaml

from conftest import REPO
from framework.cli import error_line, main, run_cli
from framework.core.divergence import check_state_dict
from framework.run_folder import LOCK_FILE, RUN_RECORD, RunFolderBusy, RunFolders
from helpers import load_config, shrink_config

MEDCL = Path(sys.executable).with_name("medcl")
QUICKSTART = Path("experiments/quickstart.yaml")


def _shrunk(tmp_path: Path, keep_loggers: bool = False, callbacks=(), **model) -> Path:
    config = shrink_config(QUICKSTART, tmp_path, keep_loggers=keep_loggers)
    data = yaml.safe_load(config.read_text())
    data["model"]["init_args"].update(model)
    data["trainer"]["callbacks"] += list(callbacks)
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def _medcl(*args: str, timeout: int = 300, background: bool = False):
    env = dict(os.environ, PYTHONPATH=str(REPO / "tests"), PYTHONUNBUFFERED="1")
    cmd = [str(MEDCL), *args]
    if background:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def _versions(root: Path):
    return sorted(p for p in root.glob("version_*") if p.is_dir())


# ---------------------------------------------------------------------------------------------- 1. divergence
def test_a_diverging_learning_rate_stops_the_run_with_one_line_and_saves_nothing(tmp_path, capsys):
    config = _shrunk(tmp_path)
    with pytest.raises(SystemExit) as stop:
        sys.argv = ["medcl", "fit", "--config", str(config), "--model.init_args.lr", "1e8"]
        main()
    assert stop.value.code == 1
    err = capsys.readouterr().err
    line = next(l for l in err.splitlines() if l.startswith("medcl: error:"))
    assert "DivergenceError: training diverged at experience 0" in line and "'bloodmnist'" in line and "not finite" in line
    assert "no checkpoint was written" in line
    assert not list(tmp_path.rglob("*.ckpt"))  # nothing non-finite was saved
    assert not list(tmp_path.rglob("continual_metrics.json"))  # and nothing was reported


def test_divergence_after_a_checkpoint_keeps_the_last_finite_one_and_test_uses_it(tmp_path):
    poison = {"class_path": "poison.PoisonWeights", "init_args": {"epoch": 1}}
    config = _shrunk(tmp_path, callbacks=[poison])
    out = _medcl("fit", "--config", str(config))
    assert out.returncode == 1, out.stderr[-2000:]
    line = next(l for l in out.stderr.splitlines() if l.startswith("medcl: error:"))
    (last,) = tmp_path.rglob("last.ckpt")
    assert "experience 1, epoch 1" in line and f"the last finite checkpoint is kept: {last}" in line
    state = torch.load(last, weights_only=True)["state_dict"]
    assert not any(torch.isnan(v).any() for v in state.values() if v.is_floating_point())
    # the kept checkpoint is the model after experience 0 and can be tested
    cli = run_cli(["test", "--config", str(config), "--ckpt_path", str(last)])
    assert cli.trainer.callback_metrics  # the test loop ran on it


def test_a_non_finite_checkpoint_is_refused_for_test_and_growth(tmp_path):
    state = {"model.w": torch.tensor([1.0, float("nan")]), "model.mask": torch.tensor([0.0, float("-inf")])}
    with pytest.raises(ValueError, match=r"--ckpt_path x\.ckpt: the checkpoint's weights are not finite \(nan in model\.w\)"):
        check_state_dict(state, "--ckpt_path x.ckpt")
    check_state_dict({"model.mask": torch.tensor([0.0, float("-inf")])}, "ok")  # an attention mask's -inf is fine


# ---------------------------------------------------------------------------------------------- 2. one run, one folder
def test_two_runs_of_one_config_started_together_get_two_folders(tmp_path):
    config = _shrunk(tmp_path)
    procs = [_medcl("fit", "--config", str(config), background=True) for _ in range(2)]
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-1500:] for o in outs]
    runs = _versions(tmp_path / "run")
    assert [r.name for r in runs] == ["version_0", "version_1"]
    for run in runs:
        rows = (run / "metrics.csv").read_text().splitlines()
        steps = [line.split(",") for line in rows[1:]]
        assert len(steps) == len(set(map(tuple, steps)))  # no interleaved duplicate rows from the other run
        assert (run / "continual_metrics.json").is_file() and (run / "config.yaml").is_file()
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["experience=0-epoch=0.ckpt", "experience=1-epoch=1.ckpt", "last.ckpt"]
        assert not (run / LOCK_FILE).exists()  # released at the end
        assert json.loads((run / RUN_RECORD).read_text())["commands"][0]["subcommand"] == "fit"


def _plain_config(root: Path, wandb: bool = False):
    from jsonargparse import Namespace

    loggers = [Namespace(class_path="pytorch_lightning.loggers.CSVLogger", init_args=Namespace(save_dir=str(root), name="run", version=None))]
    if wandb:
        loggers.append(Namespace(class_path="pytorch_lightning.loggers.WandbLogger", init_args=Namespace(save_dir=str(root), id=None, version=None)))
    return Namespace(trainer=Namespace(logger=loggers, default_root_dir=str(root), callbacks=[]))


def test_claims_are_atomic_and_a_live_lock_refuses_a_second_writer(tmp_path):
    first, second = RunFolders("fit"), RunFolders("fit")
    first.prepare(_plain_config(tmp_path), None)
    second.prepare(_plain_config(tmp_path), None)
    assert (first.path.name, second.path.name) == ("version_0", "version_1")
    # a command on version_0's checkpoint while its run is still going is refused
    (first.path / "checkpoints").mkdir()
    ckpt = first.path / "checkpoints" / "last.ckpt"
    ckpt.write_bytes(b"")
    (first.path / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename, "started": "now"}))
    with pytest.raises(RunFolderBusy, match=rf"run folder {first.path} is in use by process {os.getppid()}"):
        RunFolders("test").prepare(_plain_config(tmp_path), str(ckpt))
    # a lock left by a dead process is taken over
    (first.path / LOCK_FILE).write_text(json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename}))
    again = RunFolders("test")
    again.prepare(_plain_config(tmp_path), str(ckpt))
    assert again.path == first.path and again.continued


# ---------------------------------------------------------------------------------------------- 3. clean-up
def test_a_failed_run_removes_only_its_own_output(tmp_path):
    mine = RunFolders("fit")
    mine.prepare(_plain_config(tmp_path, wandb=True), None)
    wandb_dir = tmp_path / "wandb"
    (wandb_dir / f"offline-run-20260101_000000-{mine.wandb_id}").mkdir(parents=True)
    other_run = tmp_path / "run" / "version_1"  # a concurrent run's folder, started after mine
    other_run.mkdir()
    (other_run / "metrics.csv").write_text("epoch\n0\n")
    other_wandb = wandb_dir / "offline-run-20260101_000001-otherid1"
    other_wandb.mkdir()
    removed = mine.remove_partial()
    assert mine.path in removed and not mine.path.exists()
    assert not list(wandb_dir.glob(f"*-{mine.wandb_id}"))
    assert other_run.is_dir() and (other_run / "metrics.csv").is_file() and other_wandb.is_dir()


def test_a_failed_run_that_wrote_a_checkpoint_is_kept(tmp_path):
    mine = RunFolders("fit")
    mine.prepare(_plain_config(tmp_path), None)
    (mine.path / "checkpoints").mkdir()
    (mine.path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert mine.remove_partial() == [] and mine.path.is_dir()


# ---------------------------------------------------------------------------------------------- 4. resume
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A shrunk quickstart with its CSV and W&B loggers, killed in epoch 1 (experience 1), then resumed."""
    tmp = tmp_path_factory.mktemp("resumed")
    kill = {"class_path": "kill_switch.KillAt", "init_args": {"epoch": 1, "batch": 1}}
    config = _shrunk(tmp, keep_loggers=True, callbacks=[kill])
    killed = _medcl("fit", "--config", str(config))
    assert killed.returncode != 0
    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"] = [c for c in data["trainer"]["callbacks"] if "kill_switch" not in c["class_path"]]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    resumed = _medcl("fit", "--config", str(config), "--ckpt_path", "last")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    return tmp, config


@pytest.mark.parametrize("option, value, field", [
    ("--model.init_args.lr", "0.5", "lr: checkpoint 0.001, config 0.5"),
    ("--model.init_args.epochs_per_experience", "2", "epochs_per_experience: checkpoint 1, config 2"),
])
def test_resume_refuses_a_changed_hyper_parameter(finished_run, option, value, field):
    tmp, config = finished_run
    with pytest.raises(ValueError, match="resuming would change what the run computes") as err:
        run_cli(["fit", "--config", str(config), "--ckpt_path", "last", option, value])
    assert field in str(err.value) and "--model.init_args.init_from" in str(err.value)


def test_a_resumed_run_is_one_folder_and_one_wandb_run(finished_run):
    tmp, config = finished_run
    logger = yaml.safe_load(config.read_text())["trainer"]["logger"][0]["init_args"]
    runs = _versions(Path(logger["save_dir"]) / logger["name"])
    assert [r.name for r in runs] == ["version_0"]  # the resume did not open version_1
    run = runs[0]
    record = json.loads((run / RUN_RECORD).read_text())
    assert [c["subcommand"] for c in record["commands"]] == ["fit", "fit"]
    assert record["commands"][1]["status"] == "finished" and "status" not in record["commands"][0]  # the first was killed
    wandb_runs = sorted(Path(tmp).rglob(f"offline-run-*-{record['wandb_run_id']}"))
    assert len(wandb_runs) == 2  # the killed part and the resumed part: one W&B run id
    assert not [p for p in Path(tmp).rglob("offline-run-*") if not p.name.endswith(record["wandb_run_id"])]
    # metrics.csv holds both parts: epoch 0 (before the kill) and epoch 1 (after the resume)
    import csv

    with open(run / "metrics.csv") as fh:
        epochs = {row["epoch"] for row in csv.DictReader(fh) if row.get("epoch")}
    assert {"0", "1"} <= epochs
    assert (run / "config.yaml").is_file() and (run / "config.fit-1.yaml").is_file()  # the first config is never replaced


def test_test_of_a_checkpoint_writes_into_its_run_folder(finished_run):
    tmp, config = finished_run
    (last,) = Path(tmp).rglob("last.ckpt")
    before = (last.parent.parent / "continual_metrics.json").read_bytes()
    cli = run_cli(["test", "--config", str(config), "--ckpt_path", str(last)])
    assert Path(cli.trainer.log_dir) == last.parent.parent
    assert (last.parent.parent / "continual_metrics.json").read_bytes() == before
    assert list(last.parent.parent.glob("config.test-*.yaml"))


def test_the_wandb_run_config_holds_the_whole_resolved_config(tmp_path, monkeypatch):
    import wandb

    finish = wandb.finish
    monkeypatch.setattr(wandb, "finish", lambda *a, **k: None)  # keep the run open to read its config
    try:
        config = _shrunk(tmp_path, keep_loggers=True)
        cli = run_cli(["fit", "--config", str(config), "--trainer.limit_train_batches", "1"])
        stored = dict(wandb.run.config)
        run_id = wandb.run.id
    finally:
        finish()
    assert {"model", "data", "trainer", "seed_everything"} <= set(stored)
    assert stored["data"]["init_args"]["domains"][0]["init_args"]["flag"] == "bloodmnist"
    assert any(c["class_path"].endswith("ReplayCallback") for c in stored["trainer"]["callbacks"])
    assert stored["lr"] == 0.001  # Lightning's own model hyper-parameters stay
    record = json.loads((Path(cli.trainer.log_dir) / RUN_RECORD).read_text())
    assert record["wandb_run_id"] == run_id  # the run folder names its W&B run
    assert len(list(tmp_path.rglob(f"offline-run-*-{run_id}"))) == 1


# ---------------------------------------------------------------------------------------------- 5. stage checkpoints
def test_a_killed_rerun_of_a_stage_leaves_the_finished_stage_checkpoint(tmp_path):
    stage_ckpt = tmp_path / "stages" / "01_stage.ckpt"
    stage = {"class_path": "framework.callbacks.StageCheckpoint", "init_args": {"path": str(stage_ckpt)}}
    config = _shrunk(tmp_path, callbacks=[stage])
    assert _medcl("fit", "--config", str(config)).returncode == 0
    finished = stage_ckpt.read_bytes()
    kill = {"class_path": "kill_switch.KillAt", "init_args": {"epoch": 1, "batch": 0}}
    killed = _shrunk(tmp_path / "rerun", callbacks=[stage, kill])
    assert _medcl("fit", "--config", str(killed)).returncode != 0
    assert stage_ckpt.read_bytes() == finished  # the killed re-run never touched it
    assert _medcl("fit", "--config", str(config)).returncode == 0  # a finished re-run replaces it ...
    assert stage_ckpt.with_name("01_stage-v1.ckpt").read_bytes() == finished  # ... and keeps the earlier one


# ---------------------------------------------------------------------------------------------- 9. class paths
def test_a_class_path_under_an_unknown_key_is_never_imported(tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "mymod_untrusted.py").write_text(f"open({str(marker)!r}, 'w').write('x')\nclass X: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    config = load_config(QUICKSTART)
    config["notes"] = {"class_path": "mymod_untrusted.X"}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    from framework.cli import check_class_paths

    check_class_paths(["--config", str(path)])
    with pytest.raises(Exception) as err:
        run_cli(["fit", "--config", str(path)])
    assert "notes" in error_line(err.value)
    assert not marker.exists()


def test_an_unquoted_yaml_number_names_its_field(tmp_path):
    config = load_config(QUICKSTART)
    config["trainer"]["callbacks"][-1]["init_args"] = {"filename": 1}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(Exception) as err:
        run_cli(["fit", "--config", str(path)])
    line = error_line(err.value)
    assert "field trainer.callbacks (framework.callbacks.ExperienceCheckpoint).init_args.filename" in line
    assert "put the value in quotes" in line


# ---------------------------------------------------------------------------------------------- 10. orphan temporaries
def _ended_run(tmp_path: Path) -> Tuple[RunFolders, Path]:
    """A new run folder whose command has ended (lock released), and its empty checkpoints folder."""
    run = RunFolders("fit")
    run.prepare(_plain_config(tmp_path), None)
    run.release()
    (run.path / "checkpoints").mkdir()
    return run, run.path / "checkpoints"


def test_continuing_a_run_removes_the_temporaries_a_killed_write_left(tmp_path):
    _, checkpoints = _ended_run(tmp_path)
    (checkpoints / "last.ckpt").write_bytes(b"x")
    orphans = [checkpoints / ".last.ckpt.k3j2x9.tmp", checkpoints / ".experience=0-epoch=0.ckpt.a1b2c3.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"exemplars")
    RunFolders("fit").prepare(_plain_config(tmp_path), str(checkpoints / "last.ckpt"))
    assert not any(o.exists() for o in orphans) and (checkpoints / "last.ckpt").is_file()


def test_fit_from_an_earlier_checkpoint_of_a_run_branches_into_a_new_folder(tmp_path):
    first, checkpoints = _ended_run(tmp_path)
    early, last = checkpoints / "experience=0-epoch=0.ckpt", checkpoints / "last.ckpt"
    early.write_bytes(b"early")
    os.utime(early, (time.time() - 60, time.time() - 60))
    last.write_bytes(b"last")
    branch = RunFolders("fit")
    branch.prepare(_plain_config(tmp_path), str(early))
    assert not branch.continued and branch.path.name == "version_1" and branch.branched_from == first.path
    resumed = RunFolders("fit")
    resumed.prepare(_plain_config(tmp_path), str(last))  # the newest checkpoint continues its run
    assert resumed.continued and resumed.path == first.path
    tested = RunFolders("test")
    tested.prepare(_plain_config(tmp_path), str(early))  # test writes no checkpoint: it goes into the run's folder
    assert tested.continued and tested.path == first.path
