"""Patient data kept out of shared artefacts (docs/patient_data.md).

* ``medcl-share`` writes a checkpoint without replay exemplars (raw training images) that still
  loads, tests and grows a new run, and refuses clearly to resume a replay run;
* W&B stays offline unless the user opts in with ``WANDB_MODE=online``, whatever a config says;
* no test images are logged to W&B unless ``ContinualEvaluation(log_images=true)``;
* patient names planted in NIfTI headers appear in no file a run or ``medcl predict`` writes.
"""
import gzip
import hashlib
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from conftest import REPO
from framework.callbacks import ContinualEvaluation, ReplayCallback
from framework.core.checkpoints import load_checkpoint
from framework.cli import run_cli
from framework.paradigms import ContinualModule
from framework.sharing import STRIPPED_KEY, strip_exemplars
from helpers import load_config, shrink_config

BIN = Path(sys.executable).parent
TASKS = ["bloodmnist", "organamnist"]
PATIENT = "DOE^JANE-PATIENT-4711"
# what is planted in each NIfTI header field (db_name holds 18 bytes, intent_name 16)
PLANTED = {"descrip": PATIENT, "aux_file": PATIENT, "db_name": "DOE^JANE-4711", "intent_name": "JANE-4711"}
NEEDLES = [b"DOE^JANE", b"JANE-4711", b"PATIENT-4711"]


def _sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _env(**changes):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHONPATH=str(REPO))
    for key, value in changes.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def _run(script, args, env=None, timeout=600):
    return subprocess.run([str(BIN / script), *map(str, args)], cwd=REPO, env=env or _env(), capture_output=True, text=True, timeout=timeout)


def _finish_wandb():
    """One W&B run per in-process fit (Lightning would otherwise reuse the open run)."""
    import wandb

    if wandb.run is not None:
        wandb.finish()


def _tensors(node):
    if isinstance(node, torch.Tensor):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from _tensors(value)
    elif isinstance(node, (list, tuple)):
        for value in node:
            yield from _tensors(value)


def _media_images(run_root):
    """Paths (relative to ``media/images``) of the image files of every W&B run under ``run_root``."""
    found = []
    for media in Path(run_root).rglob("files/media/images"):
        found += [p.relative_to(media).as_posix() for p in media.rglob("*") if p.is_file()]
    return sorted(found)


def _with_replay_checkpoint(tmp_path, world_size=1):
    """A small MedCL-shaped checkpoint with a replay entry holding uint8 exemplars."""
    images = torch.randint(0, 256, (5, 3, 28, 28), dtype=torch.uint8)
    rank = {"format": 2, "policy": "reservoir", "tasks": {"blood": {"image": images, "target": torch.arange(5)}}}
    checkpoint = {
        "state_dict": {"w": torch.ones(3)},
        "medcl": {"format": 1, "paradigm": "ContinualModule", "tasks": []},
        "callbacks": {"ReplayCallback": {"world_size": world_size, "ranks": [rank] * world_size, "policy": "reservoir"}},
        "datamodule_hyper_parameters": {"file": "/data/DOE_JANE_4711.npz"},
    }
    path = tmp_path / "model.ckpt"
    torch.save(checkpoint, path)
    return path, images


# ---------------------------------------------------------------- medcl-share: fast checks
def test_strip_exemplars_removes_every_ranks_samples_and_the_datamodule_paths(tmp_path):
    src, images = _with_replay_checkpoint(tmp_path, world_size=2)
    result = strip_exemplars(src, tmp_path / "shared.ckpt")
    assert result["removed_samples"] == 10 and result["tasks"] == {"blood": 10}
    assert result["dropped"] == ["datamodule_hyper_parameters"] and result["bytes_after"] < result["bytes_before"]
    shared = load_checkpoint(tmp_path / "shared.ckpt")
    assert shared["callbacks"]["ReplayCallback"] == {
        STRIPPED_KEY: True, "policy": "reservoir", "world_size": 2, "removed_samples": 10, "tasks": {"blood": 10},
    }
    assert "datamodule_hyper_parameters" not in shared and torch.equal(shared["state_dict"]["w"], torch.ones(3))
    assert images.numpy().tobytes()[:2352] not in (tmp_path / "shared.ckpt").read_bytes()


def test_strip_exemplars_errors_name_the_file_and_what_was_expected(tmp_path):
    src, _ = _with_replay_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"input checkpoint '.*missing\.ckpt': file not found"):
        strip_exemplars(tmp_path / "missing.ckpt", tmp_path / "out.ckpt")
    with pytest.raises(ValueError, match=r"output '.*model\.ckpt' expected a new file, found the input checkpoint itself"):
        strip_exemplars(src, src)
    torch.save({"state_dict": {}}, tmp_path / "plain.ckpt")
    with pytest.raises(ValueError, match=r"plain\.ckpt': expected a MedCL checkpoint with 'medcl' and 'state_dict' entries .*found top-level keys \['state_dict'\]"):
        strip_exemplars(tmp_path / "plain.ckpt", tmp_path / "out.ckpt")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match=r"notes\.txt'.*expected a PyTorch checkpoint"):
        strip_exemplars(tmp_path / "notes.txt", tmp_path / "out.ckpt")
    assert not (tmp_path / "out.ckpt").exists()


def test_a_stripped_replay_entry_is_refused_before_the_older_format_check():
    callback = ReplayCallback(capacity=10)
    with pytest.raises(ValueError, match=r"shared without its replay exemplars \(medcl-share removed 7 stored samples\), so it cannot "
                                         r"resume a replay run; resume from the original checkpoint, or start a new run from this one "
                                         r"with --model.init_args.init_from"):
        callback.load_state_dict({STRIPPED_KEY: True, "policy": "reservoir", "world_size": 1, "removed_samples": 7})
    with pytest.raises(ValueError, match="older MedCL"):  # the older-format check still applies to other entries
        callback.load_state_dict({"policy": "reservoir"})


def test_log_images_must_be_a_bool():
    assert ContinualEvaluation().log_images is False
    with pytest.raises(ValueError, match=r"ContinualEvaluation: log_images expected true or false, found 'yes'"):
        ContinualEvaluation(log_images="yes")


def test_shipped_wandb_configs_say_offline():
    checked = []
    for path in sorted((REPO / "experiments").rglob("*.yaml")):
        if "callbacks" in path.relative_to(REPO / "experiments").parts[:1]:  # callbacks, named by experiments
            continue
        for logger in (load_config(path) or {}).get("trainer", {}).get("logger") or []:
            if isinstance(logger, dict) and logger.get("class_path", "").endswith("WandbLogger"):
                assert logger.get("init_args", {}).get("offline") is True, f"{path}: WandbLogger without offline: true"
                checked.append(path)
    assert len(checked) >= 10 and REPO / "experiments" / "quickstart.yaml" in checked


# ---------------------------------------------------------------- a real quickstart run
@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    """The shrunk quickstart with its W&B logger, configured ``offline: false``, run as a user runs
    it with no WANDB_MODE (nor API key) in the environment."""
    out = tmp_path_factory.mktemp("quickstart")
    config = shrink_config("experiments/quickstart.yaml", out, keep_loggers=True)
    data = yaml.safe_load(config.read_text())
    (wandb_logger,) = [lg for lg in data["trainer"]["logger"] if lg["class_path"].endswith("WandbLogger")]
    wandb_logger["init_args"]["offline"] = False
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    proc = _run("medcl", ["fit", "--config", config], env=_env(WANDB_MODE=None, WANDB_API_KEY=None))
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    (ckpt,) = out.rglob("last.ckpt")
    return {"out": out, "config": config, "ckpt": ckpt, "stripped": out / "shared" / "stripped.ckpt"}


@pytest.fixture(scope="module")
def shared(quickstart):
    """``medcl-share last.ckpt stripped.ckpt``, as a user runs it."""
    before = _sha(quickstart["ckpt"])
    proc = _run("medcl-share", [quickstart["ckpt"], quickstart["stripped"]])
    assert proc.returncode == 0, proc.stderr
    return {**quickstart, "stdout": proc.stdout, "sha_before": before}


@pytest.mark.slow
def test_wandb_ran_offline_although_the_config_said_offline_false(quickstart):
    # W&B names a run folder offline-run-<date>-<id> offline and run-<date>-<id> when it syncs to the server
    runs = [p.name for p in (quickstart["out"] / "wandb").iterdir() if "run-" in p.name and p.name != "latest-run"]
    assert len(runs) == 1 and runs[0].startswith("offline-run"), runs


@pytest.mark.slow
def test_by_default_wandb_gets_only_the_heat_map_and_curves(quickstart):
    images = _media_images(quickstart["out"] / "wandb")
    assert any(p.startswith("continual/heatmap") for p in images) and any(p.startswith("continual/task_curves") for p in images)
    assert all(p.startswith(("continual/heatmap", "continual/task_curves")) for p in images), images


@pytest.mark.slow
def test_medcl_share_prints_one_summary_line_and_leaves_the_input_alone(shared):
    original = load_checkpoint(shared["ckpt"])
    stored = sum(len(d["image"]) for rank in original["callbacks"]["ReplayCallback"]["ranks"] for d in rank["tasks"].values())
    assert stored > 0
    (line,) = shared["stdout"].strip().splitlines()
    match = re.fullmatch(r"medcl-share: wrote (.+): removed (\d+) replay samples \(bloodmnist: \d+, organamnist: \d+\); ([\d.]+) MB -> ([\d.]+) MB", line)
    assert match, line
    assert Path(match.group(1)) == shared["stripped"] and int(match.group(2)) == stored
    assert float(match.group(4)) < float(match.group(3))
    assert _sha(shared["ckpt"]) == shared["sha_before"]  # the input is only read


@pytest.mark.slow
def test_stripped_checkpoint_holds_no_exemplar_and_the_same_weights(shared):
    original = load_checkpoint(shared["ckpt"])
    stripped = load_checkpoint(shared["stripped"])
    exemplars = [image for rank in original["callbacks"]["ReplayCallback"]["ranks"] for d in rank["tasks"].values() for image in d["image"]]
    assert exemplars and exemplars[0].dtype == torch.uint8
    marker = stripped["callbacks"]["ReplayCallback"]
    assert marker[STRIPPED_KEY] is True and marker["removed_samples"] == len(exemplars) and marker["policy"] == "class_balanced"
    assert not [t for t in _tensors(stripped["callbacks"]) if t.dtype == torch.uint8]
    everything = list(_tensors(stripped))
    for image in exemplars:
        assert not any(t.shape == image.shape and torch.equal(t, image) for t in everything)
    raw = shared["stripped"].read_bytes()
    assert not any(image.numpy().tobytes() in raw for image in exemplars[::4])
    assert stripped["state_dict"].keys() == original["state_dict"].keys()
    assert all(torch.equal(stripped["state_dict"][k], v) for k, v in original["state_dict"].items())
    assert stripped["medcl"] == original["medcl"] and stripped["hyper_parameters"] == original["hyper_parameters"]


@pytest.mark.slow
def test_stripped_checkpoint_loads_strictly_and_tests(shared):
    module = ContinualModule.load_from_checkpoint(shared["stripped"], map_location="cpu", strict=True)
    reference = ContinualModule.load_from_checkpoint(shared["ckpt"], map_location="cpu", strict=True)
    assert list(module.task_specs) == TASKS
    images = torch.rand(2, 3, 28, 28)
    module.eval(), reference.eval()
    with torch.no_grad():
        assert torch.equal(module.model(images, task="organamnist"), reference.model(images, task="organamnist"))
    # test/predict with the replay config need no exemplars: the buffer stays empty
    cli = run_cli(["test", "--config", str(shared["config"]), "--ckpt_path", str(shared["stripped"]), "--trainer.logger", "false",
                   "--trainer.default_root_dir", str(shared["out"] / "test_stripped")])
    (replay,) = [c for c in cli.trainer.callbacks if isinstance(c, ReplayCallback)]
    assert len(replay.buffer) == 0 and cli.trainer.state.finished


@pytest.mark.slow
def test_medcl_share_refuses_to_overwrite_without_the_flag(shared):
    before = _sha(shared["stripped"])
    proc = _run("medcl-share", [shared["ckpt"], shared["stripped"]])
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.splitlines()[0] == (
        f"medcl-share: error: ValueError: medcl-share: output {str(shared['stripped'])!r} expected a new file, found an existing "
        f"file; pass --overwrite to replace it"
    )
    assert "Traceback" not in proc.stderr and _sha(shared["stripped"]) == before
    proc = _run("medcl-share", [shared["stripped"], shared["stripped"], "--overwrite"])
    assert proc.returncode == 1 and "found the input checkpoint itself" in proc.stderr
    proc = _run("medcl-share", [shared["ckpt"], shared["stripped"], "--overwrite"])
    assert proc.returncode == 0 and proc.stdout.startswith("medcl-share: wrote")


@pytest.mark.slow
def test_resuming_a_replay_run_from_a_stripped_checkpoint_is_one_clear_error(shared):
    proc = _run("medcl", ["fit", "--config", shared["config"], "--ckpt_path", shared["stripped"]])
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("medcl: error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert errors[0].startswith("medcl: error: ValueError: Replay: the checkpoint was shared without its replay exemplars")
    assert "resume from the original checkpoint" in errors[0] and "--model.init_args.init_from" in errors[0]


@pytest.mark.slow
def test_stripped_checkpoint_grows_a_new_run_with_init_from(shared, tmp_path):
    config = shrink_config("experiments/quickstart.yaml", tmp_path)
    data = yaml.safe_load(config.read_text())
    domain = data["data"]["init_args"]["domains"][0]
    domain["init_args"]["task_name"] = "blood_again"
    data["data"]["init_args"]["domains"] = [domain]
    data["trainer"]["max_epochs"] = 1
    data["model"]["init_args"]["init_from"] = str(shared["stripped"])
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    cli = run_cli(["fit", "--config", str(config)])
    assert list(cli.model.task_specs) == [*TASKS, "blood_again"] and cli.model.initial_tasks == TASKS
    assert cli.trainer.global_step == 2


# ---------------------------------------------------------------- log_images
@pytest.mark.slow
def test_log_images_logs_captioned_test_images(tmp_path):
    config = shrink_config("experiments/quickstart.yaml", tmp_path, keep_loggers=True)
    data = yaml.safe_load(config.read_text())
    for callback in data["trainer"]["callbacks"]:
        if callback["class_path"].endswith("ContinualEvaluation"):
            callback["init_args"]["log_images"] = True
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    try:
        run_cli(["fit", "--config", str(config)])
    finally:
        _finish_wandb()
    images = _media_images(tmp_path / "wandb")
    for task in TASKS:
        logged = [p for p in images if p.startswith(f"samples/{task}")]
        assert 8 <= len(logged) <= 16, images  # at most 8 per experience end (2 experiences)
    (history,) = (tmp_path / "wandb").rglob("*.wandb")
    assert re.search(rb"pred [A-Za-z ]+ / true [A-Za-z ]+", history.read_bytes())


# ---------------------------------------------------------------- metadata
def _nifti(path, array):
    image = nib.Nifti1Image(array, np.diag([0.8, 0.8, 2.5, 1.0]))
    for field, value in PLANTED.items():
        image.header[field] = value
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(image, str(path))
    assert PATIENT.encode() in gzip.decompress(path.read_bytes())  # really planted


def _patient_datasets(root):
    """A 3D segmentation folder and a 2D survival folder + CSV of NIfTI files with planted headers."""
    rng = np.random.default_rng(0)
    seg = root / "seg"
    for split, n in (("train", 6), ("val", 2), ("test", 2)):
        for i in range(n):
            volume = rng.normal(100, 30, (4, 28, 28)).astype(np.float32)
            mask = np.zeros((4, 28, 28), np.uint8)
            mask[:, 8 + i: 18 + i, 6:20] = 1
            volume[mask == 1] += 80
            _nifti(seg / split / "images" / f"case{i}.nii.gz", volume)
            _nifti(seg / split / "masks" / f"case{i}.nii.gz", mask)
    surv = root / "surv"
    rows = ["id,time,event,split"]
    for i in range(24):
        split = "train" if i < 16 else "val" if i < 20 else "test"
        _nifti(surv / f"p{i:02d}.nii.gz", rng.normal(0, 1, (28, 28)).astype(np.float32))
        rows.append(f"p{i:02d},{2.0 + i},{i % 2},{split}")
    (root / "survival.csv").write_text("\n".join(rows) + "\n")
    return seg, surv, root / "survival.csv"


def _leaks(root):
    """Files under ``root`` whose bytes (gzip members and zip members unpacked too) hold a planted string."""
    found = []
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        blobs = [path.read_bytes()]
        if blobs[0][:2] == b"\x1f\x8b":
            blobs.append(gzip.decompress(blobs[0]))
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                blobs += [archive.read(name) for name in archive.namelist()]
        if any(needle in blob for needle in NEEDLES for blob in blobs):
            found.append(str(path))
    return found


def _fit_quickstart_on(tmp_path, out, domains, log_images=False):
    """The quickstart's model and callbacks (loggers kept, writing to ``out``), one short epoch per domain, on ``domains``."""
    config = load_config(REPO / "experiments/quickstart.yaml")
    config["model"]["init_args"].update(epochs_per_experience=1, head_args={"segmentation": {"feature_size": 8}})
    config["data"]["init_args"]["domains"] = domains
    trainer = config["trainer"]
    trainer.update(max_epochs=len(domains), default_root_dir=str(out), limit_train_batches=2, limit_val_batches=1,
                   enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    for logger in trainer["logger"]:
        logger["init_args"]["save_dir"] = str(out)
    for callback in trainer["callbacks"]:
        if callback["class_path"].endswith("ContinualEvaluation"):
            callback["init_args"]["log_images"] = log_images
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    try:
        return cfg, run_cli(["fit", "--config", str(cfg)])
    finally:
        _finish_wandb()


@pytest.mark.slow
def test_names_in_nifti_headers_reach_no_output_file(tmp_path):
    seg, surv, table = _patient_datasets(tmp_path / "data")
    out = tmp_path / "run"
    cfg, cli = _fit_quickstart_on(tmp_path, out, [
        {"class_path": "data_modules.SegmentationDataModule",
         "init_args": {"root": str(seg), "task_name": "organ3d", "label_names": ["organ"], "in_channels": 1, "spatial_dims": 3, "batch_size": 2}},
        {"class_path": "data_modules.SurvivalDataModule",
         "init_args": {"images": str(surv), "table": str(table), "task_name": "survival", "num_time_bins": 4, "batch_size": 8}},
    ], log_images=True)  # sample images (segmentation masks, risk captions) are written too
    (ckpt,) = out.rglob("last.ckpt")
    assert cli.model.task_specs.keys() == {"organ3d", "survival"}
    buffer = load_checkpoint(ckpt)["callbacks"]["ReplayCallback"]["ranks"][0]["tasks"]
    assert set(buffer) == {"organ3d", "survival"}  # the exemplars read from the NIfTI files are in the checkpoint
    from framework.callbacks import PredictionWriter

    written = {}
    for path, task in ((seg / "test" / "images", "organ3d"), (surv, "survival")):
        predicted = run_cli(["predict", "--config", str(cfg), "--ckpt_path", str(ckpt), "--trainer.logger", "false",
                             "--data.init_args.predict_path", str(path), "--data.init_args.predict_task", task])
        written[task] = next(cb for cb in predicted.trainer.callbacks if isinstance(cb, PredictionWriter)).root / task
    masks = sorted((written["organ3d"] / "masks").glob("*.nii.gz"))
    assert [m.name for m in masks] == ["case0.nii.gz", "case1.nii.gz"]
    assert nib.load(str(masks[0])).header["descrip"].item() == b""  # only the geometry is written
    assert (written["survival"] / "predictions.csv").read_text().count("\n") == 25
    assert any(p.startswith("samples/organ3d") for p in _media_images(out / "wandb"))
    assert any(p.startswith("samples/survival") for p in _media_images(out / "wandb"))
    assert _leaks(tmp_path / "data")  # the check finds the planted name where it is
    assert _leaks(out) == []


def _dicom_segmentation(root):
    """A 3D segmentation folder whose images are DICOM series (patient name and id planted) and masks NIfTI."""
    from data_modules.synthetic import synthetic_ct, write_dicom_series

    spacing, origin = (0.8, 0.8, 2.5), (-100.0, -120.0, 40.0)
    lps_to_ras = np.array([[-spacing[0], 0, 0, -origin[0]], [0, -spacing[1], 0, -origin[1]], [0, 0, spacing[2], origin[2]], [0, 0, 0, 1]])
    for split, n in (("train", 4), ("val", 2), ("test", 2)):
        for i in range(n):
            volume, mask = synthetic_ct((28, 28, 4), seed=10 * i + len(split))
            series = write_dicom_series(root / split / "images" / f"case{i}", volume, spacing=spacing, origin=origin,
                                        patient_name=PATIENT, patient_id="JANE-4711")
            assert PATIENT.encode() in next(series.glob("*.dcm")).read_bytes()  # really planted
            (root / split / "masks").mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(mask, lps_to_ras), str(root / split / "masks" / f"case{i}.nii.gz"))
    return root


@pytest.mark.slow
def test_names_in_dicom_series_reach_no_output_file(tmp_path):
    """A CT task read from DICOM series (abdomen window): the run, its checkpoint and ``medcl predict`` hold no identifier."""
    seg = _dicom_segmentation(tmp_path / "data" / "seg")
    out = tmp_path / "run"
    cfg, cli = _fit_quickstart_on(tmp_path, out, [
        {"class_path": "data_modules.SegmentationDataModule",
         "init_args": {"root": str(seg), "task_name": "ct_organ", "label_names": ["organ"], "in_channels": 1, "spatial_dims": 3,
                       "batch_size": 2, "intensity": "ct:abdomen"}},
    ])
    assert cli.model.task_specs["ct_organ"].intensity == "ct:abdomen"
    (ckpt,) = out.rglob("last.ckpt")
    from framework.callbacks import PredictionWriter

    predicted = run_cli(["predict", "--config", str(cfg), "--ckpt_path", str(ckpt), "--trainer.logger", "false",
                         "--data.init_args.predict_path", str(seg / "test" / "images"), "--data.init_args.predict_task", "ct_organ"])
    written = next(cb for cb in predicted.trainer.callbacks if isinstance(cb, PredictionWriter)).root / "ct_organ"
    masks = sorted((written / "masks").glob("*.nii.gz"))
    assert [m.name for m in masks] == ["case0.nii.gz", "case1.nii.gz"]  # a series is named by its folder
    assert nib.load(str(masks[0])).shape == (28, 28, 4)
    assert _leaks(tmp_path / "data")  # the check finds the planted name where it is
    assert _leaks(out) == []
