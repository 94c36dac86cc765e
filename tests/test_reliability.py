"""Reliability: seeded data order, atomic checkpoint writes, safe loading, one-line errors, no partial output.

The end-to-end kill/resume and future-independence checks are in tests/test_resume.py; the bad-input
table is tests/test_bad_inputs.py.
"""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from conftest import REPO
from data_modules import MedMNISTDataModule
from framework.core.checkpoints import ALLOW_PICKLE_ENV, AtomicCheckpointIO, atomic_save, load_checkpoint
from framework.cli import error_line, run_cli
from framework.core.seeding import ReseededRandomSampler, derived_seed, seed_epoch
from helpers import load_config, shrink_config


class Opaque:  # a pickled class: loading it would run code
    def __init__(self, value):
        self.value = value


@pytest.fixture
def seeded(monkeypatch):
    monkeypatch.setenv("PL_GLOBAL_SEED", "0")


# ---------------------------------------------------------------------------- seeding
def _order(loader):
    return torch.cat([batch["target"] if "target" in batch else batch[next(iter(batch))]["target"] for batch in loader]).tolist()


def test_training_order_depends_on_seed_and_epoch_only(seeded):
    dm = MedMNISTDataModule("bloodmnist", data_dir="data/demo/medmnist", train_subset=64, batch_size=16)
    dm.setup()
    torch.manual_seed(1)
    first = _order(dm.loader("train", keyed=False, epoch=3))
    torch.manual_seed(999)  # the global generator does not matter
    torch.rand(1000)
    loader = dm.loader("train", keyed=False, epoch=3)
    assert _order(loader) == first
    assert _order(loader) == first  # nor how often the loader was iterated
    assert _order(dm.loader("train", keyed=False, epoch=4)) != first  # another epoch, another order
    assert sorted(first) == sorted(_order(dm.loader("train", keyed=False, shuffle=False)))


def test_unseeded_run_keeps_pytorch_defaults(monkeypatch):
    monkeypatch.delenv("PL_GLOBAL_SEED", raising=False)
    assert seed_epoch(0) is None
    dm = MedMNISTDataModule("bloodmnist", data_dir="data/demo/medmnist", train_subset=32, batch_size=8)
    dm.setup()
    loader = dm.loader("train", keyed=False)
    assert not isinstance(loader.sampler, ReseededRandomSampler) and loader.generator is None


def test_epoch_reseeding_restores_the_global_generators(seeded):
    import random

    import numpy as np

    seed_epoch(5)
    a = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(100)
    seed_epoch(5)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]
    assert derived_seed(0, "epoch", 5) != derived_seed(0, "epoch", 6) != derived_seed(1, "epoch", 6)


# ---------------------------------------------------------------------------- atomic writes
def test_failed_write_keeps_the_old_checkpoint_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    other_fs = tmp_path / "tmpdir"  # where tempfile would put temporaries (another filesystem in the bug report)
    other_fs.mkdir()
    monkeypatch.setenv("TMPDIR", str(other_fs))
    target = tmp_path / "ckpts" / "last.ckpt"
    atomic_save({"state_dict": {"w": torch.ones(3)}}, target)
    real_save = torch.save

    def half_then_fail(obj, fh, *args, **kwargs):
        fh.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"state_dict": {"w": torch.zeros(3)}}, target)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.equal(load_checkpoint(target)["state_dict"]["w"], torch.ones(3))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file's mode, not mkstemp's 0600
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]
    assert not list(other_fs.iterdir())


_WRITER = """
import sys, torch
from framework.core.checkpoints import atomic_save
big = {"state_dict": {f"w{i}": torch.randn(256, 1024) for i in range(32)}}  # 32 MiB, like a quickstart checkpoint
i = 0
while True:
    big["step"] = i
    atomic_save(big, sys.argv[1])
    print(i, flush=True)
    i += 1
"""


@pytest.mark.slow
def test_sigkill_during_writes_never_leaves_a_truncated_checkpoint(tmp_path):
    target = tmp_path / "checkpoints" / "last.ckpt"
    env = dict(os.environ, TMPDIR=str(tmp_path), PYTHONPATH=str(REPO))
    steps = []
    for delay in (0.05, 0.13, 0.21, 0.37):  # kill at several moments of a later write
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env=env, cwd=REPO, stdout=subprocess.PIPE, text=True)
        proc.stdout.readline()  # the first save is complete
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        steps.append(load_checkpoint(target)["step"])  # a whole checkpoint, never half a file
    assert all(isinstance(step, int) for step in steps)
    atomic_save({"step": -1}, target)  # the next save clears temporaries left by killed writers
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.ckpt"]


def test_cli_trainers_write_checkpoints_atomically():
    cli = run_cli(["--config", "experiments/quickstart.yaml", "--trainer.logger", "false"], run=False)
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


# ---------------------------------------------------------------------------- safe loading
def test_pickled_objects_are_refused_unless_the_user_opts_in(tmp_path, monkeypatch):
    path = tmp_path / "legacy.ckpt"
    torch.save({"state_dict": {}, "extra": Opaque(3)}, path)
    monkeypatch.delenv(ALLOW_PICKLE_ENV, raising=False)
    with pytest.raises(ValueError, match=rf"init_from '.*legacy\.ckpt': holds pickled Python objects.*{ALLOW_PICKLE_ENV}=1"):
        load_checkpoint(path, "init_from")
    monkeypatch.setenv(ALLOW_PICKLE_ENV, "1")
    assert load_checkpoint(path)["extra"].value == 3


@pytest.mark.parametrize(
    "content, message",
    [(b"", "found an empty file"), (b"epoch 3, loss 0.1\n", r"found a file starting with b'epoc'"), (None, "truncated or corrupt")],
)
def test_unreadable_checkpoints_name_the_file_and_the_problem(tmp_path, content, message):
    path = tmp_path / "bad.ckpt"
    if content is None:  # a real checkpoint cut short, as an interrupted copy leaves it
        atomic_save({"state_dict": {"w": torch.randn(1000)}}, path)
        path.write_bytes(path.read_bytes()[:2000])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match=rf"--ckpt_path '.*bad\.ckpt': .*{message}"):
        load_checkpoint(path, "--ckpt_path")


def test_every_torch_load_in_the_package_is_explicit_about_pickles():
    sources = [*REPO.glob("framework/**/*.py"), *REPO.glob("data_modules/**/*.py")]
    calls = [(p, line) for p in sources for line in p.read_text().splitlines() if re.search(r"torch\.load\(", line)]
    assert calls, "expected framework/core/checkpoints.py to call torch.load"
    for path, line in calls:
        assert "weights_only=" in line, f"{path}: {line.strip()}"
    assert re.search(r"torch>=2\.[4-9]", (REPO / "setup.cfg").read_text())  # weights_only with safe globals


# ---------------------------------------------------------------------------- errors
def _raise_from(outer, inner):
    try:
        raise inner
    except Exception as err:
        raise outer from err


def test_error_line_keeps_medcl_message_not_the_deepest_cause():
    try:
        _raise_from(RuntimeError("CLIPBackbone: could not download 'x' (no internet?). Download it elsewhere"), OSError("Name or service not known"))
    except RuntimeError as err:
        assert error_line(err) == "RuntimeError: CLIPBackbone: could not download 'x' (no internet?). Download it elsewhere"
    worker = ValueError("Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n  File \"x.py\", line 1\nValueError: a.npz: array 'x' is damaged")
    assert error_line(worker) == "ValueError: a.npz: array 'x' is damaged"
    assert error_line(KeyError("DomainStream has no task 'x'")) == "KeyError: DomainStream has no task 'x'"


@pytest.mark.slow
def test_a_failed_run_leaves_no_partial_output(tmp_path):
    config = shrink_config("experiments/quickstart.yaml", tmp_path, keep_loggers=True)
    data = yaml.safe_load(config.read_text())
    data["data"]["init_args"]["domains"][1]["init_args"]["data_dir"] = str(tmp_path / "no_such_folder")
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    earlier = tmp_path / "quickstart" / "version_0"  # an earlier run's folder is left alone
    earlier.mkdir(parents=True)
    (earlier / "metrics.csv").write_text("epoch\n0\n")
    with pytest.raises(FileNotFoundError, match="no_such_folder"):
        run_cli(["fit", "--config", str(config)])
    assert sorted(p.name for p in (tmp_path / "quickstart").iterdir()) == ["version_0"]
    assert (earlier / "metrics.csv").read_text() == "epoch\n0\n"
    assert not list(tmp_path.rglob("offline-run-*")) and [p for p in tmp_path.rglob("config.yaml") if p != config] == []


# ---------------------------------------------------------------------------- storage
def test_shipped_configs_keep_last_and_experience_end_checkpoints_only():
    for path in sorted(REPO.glob("experiments/**/*.yaml")):
        if path.parent.name == "callbacks" or path.parent.parent.name == "callbacks":  # a callback or list of them, named by experiments
            continue
        callbacks = ((load_config(path) or {}).get("trainer") or {}).get("callbacks") or []
        for callback in callbacks:
            cls, args = callback["class_path"], callback.get("init_args") or {}
            if cls.endswith("ModelCheckpoint"):  # one named file per stage (experiments/unicon), or last.ckpt only (experiments/pretrain)
                named = args.get("save_top_k") == 1 and not args.get("save_last") and args.get("filename")
                last_only = args.get("save_top_k") == 0 and args.get("save_last") is True
                assert named or last_only, path
            elif "Checkpoint" in cls:  # StageCheckpoint: the finished stage's model for the next stage (experiments/unicon)
                assert cls in ("framework.callbacks.ExperienceCheckpoint", "framework.callbacks.StageCheckpoint"), path
