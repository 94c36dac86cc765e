"""Bad input, as a new user meets it through `medcl`: every case prints exactly one line
`medcl: error: <Type>: <message>` naming the file or field, what was expected and what was found;
no traceback, exit code 1, and no run folder left behind.  docs/bad_inputs.md lists every case
with the message as printed (a test below checks that it has a row for each).

Each case builds its bad input under ``tmp_path`` and returns the CLI arguments; the runs write
into ``tmp_path / "out"`` (CSV and W&B loggers kept, so a partial run folder would show).
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import pytest
import torch
import yaml

from conftest import DEMO_DIR, REPO, write_npz
from helpers import shrink_config

from framework.cli import main

DOC = REPO / "docs" / "bad_inputs.md"
BLOOD = DEMO_DIR / "bloodmnist.npz"
BLOOD_NAMES = ["basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte", "neutrophil", "platelet"]


# ---------------------------------------------------------------------------------------------- building blocks
@dataclass
class Ctx:
    """What a case builder gets: its folder, the output folder of the run and helpers."""

    tmp: Path
    out: Path
    monkeypatch: pytest.MonkeyPatch
    checkpoint: Callable[[], Path]  # a real last.ckpt of QUICKSTART_ONE_DOMAIN (trained once per session)


def medmnist(flag: str = "bloodmnist", **init) -> dict:
    args = dict(flag=flag, data_dir=str(DEMO_DIR), train_subset=48, val_subset=40, test_subset=40, batch_size=16, eval_batch_size=64)
    args.update(init)
    return {"class_path": "data_modules.MedMNISTDataModule", "init_args": {k: v for k, v in args.items() if v is not None}}


def custom_file(**init) -> dict:
    """A MedMNIST-format domain read from a user file: all samples, no subsets."""
    return medmnist(train_subset=None, val_subset=None, test_subset=None, **init)


def segmentation(**init) -> dict:
    return {"class_path": "data_modules.SegmentationDataModule", "init_args": dict(batch_size=4, **init)}


def survival(**init) -> dict:
    return {"class_path": "data_modules.SurvivalDataModule", "init_args": dict(batch_size=4, **init)}


def config(ctx: Ctx, domains: Optional[List[dict]] = None, model: Optional[dict] = None, class_path: Optional[str] = None,
           **trainer) -> str:
    """The quickstart config shrunk into ``ctx.out`` (CSV + W&B loggers), with ``domains`` as its stream."""
    path = shrink_config("experiments/quickstart.yaml", ctx.out, keep_loggers=True)
    cfg = yaml.safe_load(path.read_text())
    domains = domains if domains is not None else [medmnist()]
    cfg["data"]["init_args"]["domains"] = domains
    cfg["model"]["init_args"].update(model or {})
    if class_path is not None:
        cfg["model"]["class_path"] = class_path
        if not class_path.endswith("ContinualModule"):
            cfg["model"]["init_args"].pop("epochs_per_experience", None)
    cfg["trainer"]["max_epochs"] = len(domains)
    cfg["trainer"].update(trainer)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return str(path)


def blood_arrays(n: Tuple[int, int, int] = (12, 6, 6), rgb: bool = True, classes: int = 8) -> Dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n):
        arrays[f"{split}_images"] = rng.integers(0, 256, size=(count, 28, 28, 3) if rgb else (count, 28, 28), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % classes).reshape(-1, 1).astype(np.uint8)
    return arrays


def damaged_copy(ctx: Ctx, source: Path, name: str, damage: Callable[[bytes], bytes]) -> Path:
    path = ctx.tmp / name
    path.write_bytes(damage(source.read_bytes()))
    return path


def first_member_data(raw: bytes) -> Tuple[int, int]:
    """(start, length) of the first zip member's (compressed) data (sizes from the central directory)."""
    import io
    import zipfile

    info = zipfile.ZipFile(io.BytesIO(raw)).infolist()[0]
    at = info.header_offset
    assert raw[at:at + 4] == b"PK\x03\x04"
    name_len, extra_len = int.from_bytes(raw[at + 26:at + 28], "little"), int.from_bytes(raw[at + 28:at + 30], "little")
    return at + 30 + name_len + extra_len, info.compress_size


def flip_first_member(raw: bytes) -> bytes:
    start, length = first_member_data(raw)
    middle = start + length // 2
    data = bytearray(raw)
    for i in range(middle, middle + 64):
        data[i] ^= 0xFF
    return bytes(data)


def png(path: Path, shape: Tuple[int, ...], value: Optional[int] = None) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(str(path)))
    array = rng.integers(0, 256, shape, dtype=np.uint8) if value is None else np.full(shape, value, np.uint8)
    Image.fromarray(array).save(path)


def seg_folder(ctx: Ctx, mask_shape=(16, 16), missing_mask: Optional[str] = None) -> Path:
    """root/{train,val,test}/{images,masks}/<id>.png, grayscale 16x16; the first train mask gets ``mask_shape``."""
    root = ctx.tmp / "polyps"
    for split in ("train", "val", "test"):
        for i in range(2):
            png(root / split / "images" / f"case{i}.png", (16, 16))
            if f"{split}/case{i}" == missing_mask:
                continue
            shape = mask_shape if (split, i) == ("train", 0) else (16, 16)
            png(root / split / "masks" / f"case{i}.png", shape, value=1)
    return root


def survival_folder(ctx: Ctx, rows: List[str], header: str = "id,time,event") -> Tuple[str, str]:
    """Six 16x16 grayscale PNGs p0..p5 and a CSV of ``rows``."""
    for i in range(6):
        png(ctx.tmp / "surv" / f"p{i}.png", (16, 16))
    table = ctx.tmp / "survival.csv"
    table.write_text("\n".join([header] + rows) + "\n")
    return str(ctx.tmp / "surv"), str(table)


def good_rows() -> List[str]:
    return [f"p{i},{i + 1},{i % 2}" for i in range(6)]


def with_row(index: int, row: str) -> List[str]:
    rows = good_rows()
    rows[index] = row
    return rows


def pickled_checkpoint(ctx: Ctx) -> Path:
    """A real checkpoint with one pickled Python object in it (as older tools wrote them)."""
    checkpoint = torch.load(ctx.checkpoint(), map_location="cpu", weights_only=True)
    checkpoint["legacy_args"] = argparse.Namespace(lr=0.001)
    path = ctx.tmp / "pickled.ckpt"
    torch.save(checkpoint, path)
    return path


def truncated_checkpoint(ctx: Ctx) -> Path:
    return damaged_copy(ctx, ctx.checkpoint(), "cut.ckpt", lambda raw: raw[: len(raw) // 2])


USER_DOMAIN = '''
from data_modules import MedMNISTDataModule
from framework.core.specs import TaskSpec


class OrganSlices(MedMNISTDataModule):
    """A user's own domain: OrganAMNIST slices as one task whose kind is misspelt."""

    @property
    def task_spec(self):
        return TaskSpec(name="organ_slices", kind="clasification", modality="ct", class_names=("liver", "kidney"))
'''


def user_package(ctx: Ctx) -> str:
    """Write USER_DOMAIN as a module the user's config can name (on sys.path, as with PYTHONPATH)."""
    text_file(ctx, "my_domains.py", USER_DOMAIN)
    ctx.monkeypatch.syspath_prepend(str(ctx.tmp))
    return "my_domains"


def text_file(ctx: Ctx, name: str, text: str) -> Path:
    path = ctx.tmp / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------------------------------------- the cases
@dataclass
class Case:
    id: str
    what: str  # what was wrong (for the docs table)
    build: Callable[[Ctx], List[str]]  # makes the bad input, returns the arguments after `medcl`
    fragments: Tuple[str, ...]  # the message must contain each (file/field, expected, found)
    env: Dict[str, str] = field(default_factory=dict)
    marks: tuple = ()


def fit(ctx: Ctx, *extra: str, **kwargs) -> List[str]:
    return ["fit", "--config", config(ctx, **kwargs), *extra]


def fit_survival(ctx: Ctx, rows: List[str], header: str = "id,time,event") -> List[str]:
    images, table = survival_folder(ctx, rows, header)
    return fit(ctx, domains=[survival(images=images, table=table, modality="ct")])


CASES = [
    # ---------------------------------------------------------------- data files (.npz)
    Case("npz-truncated", "a MedMNIST .npz cut to half its size (interrupted copy)",
         lambda c: fit(c, domains=[custom_file(file=str(damaged_copy(c, BLOOD, "bloodmnist.npz", lambda r: r[: len(r) // 2])))]),
         ("bloodmnist.npz", "not a readable .npz archive", "corrupt or was cut short")),
    Case("npz-crc", "bytes flipped inside the first member's compressed data (CRC no longer matches)",
         lambda c: fit(c, domains=[custom_file(file=str(damaged_copy(c, BLOOD, "bloodmnist.npz", flip_first_member)))]),
         ("bloodmnist.npz", "array 'train_images' is damaged", "copy or download it again")),
    Case("npz-object-array", "labels saved as a Python object array (dtype=object)",
         lambda c: fit(c, domains=[custom_file(file=str(write_npz(
             c.tmp / "bloodmnist.npz", blood_arrays(), train_labels=np.array([[i % 8] for i in range(12)], dtype=object))))]),
         ("bloodmnist.npz", "array 'train_labels' holds Python objects (dtype=object)", "numeric arrays only")),
    Case("npz-random-bytes", "a file of random bytes named .npz",
         lambda c: fit(c, domains=[custom_file(file=str(damaged_copy(
             c, BLOOD, "bloodmnist.npz", lambda r: np.random.default_rng(1).integers(0, 256, 4096, dtype=np.uint8).tobytes())))]),
         ("bloodmnist.npz", "expected an .npz archive (a zip file written by numpy.savez)", "found a file starting with")),
    Case("data-file-missing", "`data_dir` points where there is no `<flag>.npz`",
         lambda c: fit(c, domains=[medmnist(data_dir=str(c.tmp / "nowhere"))]),
         ("MedMNISTDataModule(bloodmnist)", "file not found", "nowhere/bloodmnist.npz", "pass data_dir or file")),
    Case("data-folder-missing", "a segmentation root folder that does not exist",
         lambda c: fit(c, domains=[segmentation(root=str(c.tmp / "polyps"), modality="endoscopy", in_channels=1)]),
         ("SegmentationDataModule(polyps)", "root not found", "polyps")),
    # ---------------------------------------------------------------- checkpoints
    Case("ckpt-text-file", "--ckpt_path names a text file",
         lambda c: fit(c, "--ckpt_path", str(text_file(c, "notes.txt", "epoch 3 was best\n"))),
         ("--ckpt_path", "notes.txt", "expected a PyTorch checkpoint", "found a file starting with b'epoc'")),
    Case("ckpt-truncated", "--ckpt_path of a checkpoint cut to half its size",
         lambda c: fit(c, "--ckpt_path", str(truncated_checkpoint(c))),
         ("--ckpt_path", "cut.ckpt", "truncated or corrupt checkpoint")),
    Case("init-from-truncated", "model.init_args.init_from of a checkpoint cut to half its size",
         lambda c: fit(c, model={"init_from": str(truncated_checkpoint(c))}),
         ("init_from", "cut.ckpt", "truncated or corrupt checkpoint")),
    Case("ckpt-pickled", "--ckpt_path of a checkpoint holding a pickled Python object (refused; MEDCL_ALLOW_PICKLE=1 loads it, "
         "see test_pickled_checkpoint_loads_with_opt_in)",
         lambda c: fit(c, "--ckpt_path", str(pickled_checkpoint(c))),
         ("--ckpt_path", "pickled.ckpt", "holds pickled Python objects", "MEDCL_ALLOW_PICKLE=1")),
    Case("ckpt-last-no-run", "--ckpt_path last before any run of the config wrote a last.ckpt",
         lambda c: fit(c, "--ckpt_path", "last"),
         ("--ckpt_path last", "no last.ckpt in", "expected a checkpoints/last.ckpt written by an earlier run")),
    Case("ckpt-other-backbone", "--ckpt_path of a medcl-vit-tiny checkpoint with a medcl-resnet18-tiny config",
         lambda c: fit(c, "--ckpt_path", str(c.checkpoint()), model={"backbone": "medcl-resnet18-tiny"}),
         ("--ckpt_path", "the checkpoint's model differs from the configuration",
          "backbone: checkpoint 'medcl-vit-tiny', config 'medcl-resnet18-tiny'", "init_from")),
    Case("ckpt-other-paradigm", "--ckpt_path of a ContinualModule checkpoint with a JointModule config",
         lambda c: fit(c, "--ckpt_path", str(c.checkpoint()), class_path="framework.paradigms.JointModule"),
         ("--ckpt_path", "paradigm: checkpoint framework.paradigms.ContinualModule, config framework.paradigms.JointModule")),
    Case("init-from-other-arch", "init_from a medcl-vit-tiny checkpoint with a medcl-resnet18-tiny config",
         lambda c: fit(c, model={"init_from": str(c.checkpoint()), "backbone": "medcl-resnet18-tiny"}),
         ("init_from", "the checkpoint's model differs from this configuration",
          "backbone: checkpoint 'medcl-vit-tiny', config 'medcl-resnet18-tiny'")),
    Case("resume-other-stream", "--ckpt_path of a BloodMNIST run resumed with an OrganAMNIST stream",
         lambda c: fit(c, "--ckpt_path", str(c.checkpoint()), domains=[medmnist("organamnist")]),
         ("bloodmnist", "organamnist", "resume with the same domains in the same order")),
    Case("test-without-checkpoint", "`medcl test` without --ckpt_path: the fresh model has no head for any task",
         lambda c: ["test", "--config", config(c)],
         ("nothing to test", "no head for any task", "--ckpt_path <checkpoint>")),
    Case("pretrained-offline", "an open_clip pretrained tag (RN50 'openai') without internet (HF_HUB_OFFLINE=1)",
         lambda c: fit(c, model={"backbone": "RN50", "pretrained": "openai"}),
         ("could not download pretrained weights 'openai' for 'RN50'", "(no internet?)", "pass the local file: pretrained="),
         env={"HF_HUB_OFFLINE": "1"}),
    # ---------------------------------------------------------------- labels, splits, class names
    Case("test-split-empty", "a MedMNIST-format file with 0 test samples",
         lambda c: ["fit", "--config", config(c, domains=[custom_file(
             flag="toy", class_names=["a", "b", "c"], file=str(write_npz(c.tmp / "toy.npz", blood_arrays((12, 6, 0), classes=3)))
         )])],
         ("domain 'toy' has no test samples", "needs train, val, test samples")),
    Case("class-names-12-for-8", "12 class_names for the 8-class official bloodmnist",
         lambda c: fit(c, domains=[medmnist(class_names=BLOOD_NAMES + ["a", "b", "c", "d"])]),
         ("MedMNISTDataModule(bloodmnist)", "class_names has 12 names", "bloodmnist has 8 classes")),
    Case("class-names-more-than-labels", "5 class_names for a custom file whose labels are 0..2",
         lambda c: fit(c, domains=[custom_file(
             flag="toy", class_names=["a", "b", "c", "d", "e"], file=str(write_npz(c.tmp / "toy.npz", blood_arrays(classes=3))))]),
         ("toy.npz", "labels go up to 2 (3 classes)", "class_names has 5 names")),
    Case("head-args-misspelt-kind", "head_args under a misspelt task kind `clasification`",
         lambda c: fit(c, model={"head_args": {"clasification": {"learn_class_embeddings": True}}}),
         ("head_args", "'clasification'", "did you mean 'classification'?")),
    # ---------------------------------------------------------------- config keys, class paths, kinds, modalities
    Case("config-typo-trainer", "a typo in a trainer key of the YAML: `max_epochz: 3`",
         lambda c: ["fit", "--config", config(c, max_epochz=3)],
         ("trainer.max_epochz", "did you mean 'max_epochs'?", "never a silent default")),
    Case("config-typo-model-arg", "a typo in a model init_arg of the YAML: `lrr: 0.01`",
         lambda c: ["fit", "--config", config(c, model={"lrr": 0.01})],
         ("lrr", "not accepted", "did you mean 'lr'?")),
    Case("class-path-unimportable", "a class_path whose module does not exist",
         lambda c: fit(c, domains=[{"class_path": "my_medcl_plugins.MyDomain", "init_args": {}}]),
         ("class_path 'my_medcl_plugins.MyDomain'", "data.init_args.domains[0]", "could not be imported", "PYTHONPATH")),
    Case("kind-unknown", "a user data module whose TaskSpec has kind 'clasification'",
         lambda c: fit(c, domains=[{"class_path": f"{user_package(c)}.OrganSlices", "init_args": {"flag": "organamnist"}}]),
         ("TaskSpec 'organ_slices'", "field 'kind'", "expected one of", "found 'clasification'", "did you mean 'classification'?")),
    Case("modality-unknown", "a PET/CT channel (modality) the module cannot make: channels [ct, mri]",
         lambda c: fit(c, domains=[{"class_path": "data_modules.SemiSyntheticPETCTDataModule",
                                    "init_args": {"channels": ["ct", "mri"], "data_dir": str(DEMO_DIR)}}]),
         ("SemiSyntheticPETCTDataModule", "channels expected", "['ct', 'pet']", "found ['ct', 'mri']",
          "'mri' is not a channel it can make")),
    # ---------------------------------------------------------------- images: channels and volumes
    Case("channels-wrong", "grayscale images in a file given for the RGB bloodmnist",
         lambda c: fit(c, domains=[custom_file(file=str(write_npz(c.tmp / "blood_gray.npz", blood_arrays(rgb=False))))]),
         ("blood_gray.npz", "'train_images' has 1 channel(s)", "bloodmnist images have 3")),
    Case("volume-2d-for-3d", "2D slices (N, 28, 28) in a file given for the 3D vesselmnist3d",
         lambda c: fit(c, domains=[custom_file(flag="vesselmnist3d", file=str(write_npz(
             c.tmp / "vessel.npz", blood_arrays(rgb=False, classes=2))))]),
         ("vessel.npz", "'train_images'", "expected 3D volumes of shape (N, D, H, W)", "found (12, 28, 28)")),
    # ---------------------------------------------------------------- segmentation masks
    Case("seg-mask-shape", "a mask PNG of 16x12 for a 16x16 image (folder source)",
         lambda c: fit(c, domains=[segmentation(root=str(seg_folder(c, mask_shape=(16, 12))), in_channels=1, modality="endoscopy")]),
         ("train/masks/case0.png", "field 'mask'", "expected the spatial shape of its image", "(16, 16)", "found (16, 12)")),
    Case("seg-mask-values", "mask value 7 in a task with 2 labels (.npz source)",
         lambda c: fit(c, domains=[segmentation(file=str(write_npz(c.tmp / "lesions.npz", {
             "images": np.zeros((6, 16, 16), np.uint8),
             "masks": np.array([np.full((16, 16), v, np.uint8) for v in (0, 1, 2, 7, 0, 1)]),
             "split": np.array([0, 0, 1, 1, 2, 2])})), label_names=["polyp", "adenoma"], in_channels=1)]),
         ("lesions.npz", "field 'masks'", "expected label values in [0, 2]", "found values [0, 1, 2, 7]")),
    Case("seg-volume-for-2d", "3D volumes (N, D, H, W) in the .npz of a 2D segmentation task",
         lambda c: fit(c, domains=[segmentation(file=str(write_npz(c.tmp / "ct_volumes.npz", {
             "images": np.zeros((6, 4, 16, 16), np.uint8), "masks": np.zeros((6, 4, 16, 16), np.uint8),
             "split": np.array([0, 0, 1, 1, 2, 2])})), in_channels=1)]),
         ("ct_volumes.npz", "field 'masks'", "expected shape (N, H, W)", "2D-only", "found volumes of shape (6, 4, 16, 16)")),
    Case("seg-image-without-mask", "an image with no mask file (folder source)",
         lambda c: fit(c, domains=[segmentation(root=str(seg_folder(c, missing_mask="val/case1")), in_channels=1)]),
         ("val/images/case1.png", "field 'image' has no matching mask", "val/masks/case1.<ext>")),
    # ---------------------------------------------------------------- survival tables
    Case("surv-missing-column", "a survival CSV without the 'event' column",
         lambda c: fit_survival(c, [f"p{i},{i + 1}" for i in range(6)], header="id,time"),
         ("survival.csv", "missing column(s) ['event']", "expected header columns id,time,event", "found ['id', 'time']")),
    Case("surv-time-negative", "a negative survival time",
         lambda c: fit_survival(c, with_row(2, "p2,-4,1")),
         ("survival.csv", "column 'time' at line 4 (id 'p2')", "expected a finite number >= 0", "found '-4'")),
    Case("surv-time-nan", "a NaN survival time",
         lambda c: fit_survival(c, with_row(4, "p4,nan,0")),
         ("survival.csv", "column 'time' at line 6 (id 'p4')", "expected a finite number >= 0", "found 'nan'")),
    Case("surv-event-not-01", "event 'yes' instead of 0/1",
         lambda c: fit_survival(c, with_row(1, "p1,3,yes")),
         ("survival.csv", "column 'event' at line 3 (id 'p1')", "expected 0 (censored) or 1 (event)", "found 'yes'")),
    Case("surv-ids-unmatched", "survival CSV ids that match no image file (P0.. vs p0.png)",
         lambda c: fit_survival(c, [f"P{i},{i + 1},1" for i in range(6)]),
         ("survival.csv", "column 'id' value 'P0' has no image file in", "surv")),
]
CASE_BY_ID = {case.id: case for case in CASES}
assert len(CASE_BY_ID) == len(CASES), "case ids must be unique"


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def trained_checkpoint(tmp_path_factory) -> Path:
    """last.ckpt of a tiny ContinualModule run on BloodMNIST (the checkpoint-case configs match it)."""
    tmp = tmp_path_factory.mktemp("trained")
    ctx = Ctx(tmp, tmp / "out", None, lambda: None)  # type: ignore[arg-type]
    args = fit(ctx, limit_train_batches=1, logger=False, enable_checkpointing=True)
    argv = sys.argv
    cwd = os.getcwd()
    try:
        os.chdir(REPO)
        sys.argv = ["medcl", *args]
        main()
    finally:
        sys.argv = argv
        os.chdir(cwd)
    (found,) = list(ctx.out.rglob("last.ckpt"))
    return found


def run_folders(out: Path) -> List[Path]:
    return sorted([*out.rglob("version_*"), *out.rglob("offline-run-*"), *out.rglob("run-*")])


def run_case(case: Case, tmp_path: Path, request, monkeypatch, capfd) -> Tuple[object, str]:
    monkeypatch.delenv("MEDCL_TRACEBACK", raising=False)
    monkeypatch.delenv("MEDCL_ALLOW_PICKLE", raising=False)
    for key, value in case.env.items():
        monkeypatch.setenv(key, value)
    ctx = Ctx(tmp_path, tmp_path / "out", monkeypatch, lambda: request.getfixturevalue("trained_checkpoint"))
    args = case.build(ctx)
    capfd.readouterr()  # only what the run prints
    monkeypatch.setattr(sys, "argv", ["medcl", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    return exit_info.value.code, capfd.readouterr().err


def error_lines(err: str) -> List[str]:
    return [line for line in err.splitlines() if line.startswith("medcl: error:")]


# ---------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=c.marks) for c in CASES])
def test_bad_input(case: Case, tmp_path, request, monkeypatch, capfd):
    code, err = run_case(case, tmp_path, request, monkeypatch, capfd)
    assert code == 1, err[-2000:]
    lines = error_lines(err)
    if os.environ.get("MEDCL_BAD_INPUTS_DUMP"):  # collect the messages as printed (for docs/bad_inputs.md)
        shown = (lines or err.strip().splitlines()[-1:] or [""])[0].replace(str(tmp_path), "<tmp>")
        with open(os.environ["MEDCL_BAD_INPUTS_DUMP"], "a") as fh:
            fh.write(f"{case.id}\t{code}\t{shown}\n")
    assert len(lines) == 1, err[-2000:]
    assert "Traceback" not in err
    missing = [f for f in case.fragments if f not in lines[0]]
    assert not missing, f"{missing} not in: {lines[0]}"
    assert not run_folders(tmp_path / "out"), run_folders(tmp_path / "out")


def test_pickled_checkpoint_loads_with_opt_in(tmp_path, request, monkeypatch, capfd):
    """The checkpoint refused in `ckpt-pickled` is tested normally once the user opts in."""
    monkeypatch.setenv("MEDCL_ALLOW_PICKLE", "1")
    monkeypatch.delenv("MEDCL_TRACEBACK", raising=False)
    ctx = Ctx(tmp_path, tmp_path / "out", monkeypatch, lambda: request.getfixturevalue("trained_checkpoint"))
    args = ["test", "--config", config(ctx), "--ckpt_path", str(pickled_checkpoint(ctx))]
    monkeypatch.setattr(sys, "argv", ["medcl", *args])
    main()  # no SystemExit
    err = capfd.readouterr().err
    assert not error_lines(err) and "Traceback" not in err


def test_every_case_has_a_row_in_the_docs():
    text = DOC.read_text()
    rows = {m.group(1) for m in re.finditer(r"^\|\s*`?([a-z0-9-]+)`?\s*\|", text, re.M)}
    missing = [case.id for case in CASES if case.id not in rows]
    assert not missing, f"docs/bad_inputs.md has no row for {missing}"
    for case in CASES:
        assert f"tests/test_bad_inputs.py::test_bad_input[{case.id}]" in text, case.id
    assert len(CASES) >= 22


def medcl_command() -> List[str]:
    script = Path(sys.executable).parent / "medcl"
    return [str(script)] if script.exists() else [sys.executable, "-m", "framework.cli"]


@pytest.mark.slow
@pytest.mark.parametrize("case_id", ["npz-crc", "ckpt-pickled", "surv-time-nan", "pretrained-offline"])
def test_bad_input_console_script(case_id, tmp_path, request, monkeypatch):
    """The same cases through the installed `medcl` script, as a user runs it."""
    case = CASE_BY_ID[case_id]
    ctx = Ctx(tmp_path, tmp_path / "out", monkeypatch, lambda: request.getfixturevalue("trained_checkpoint"))
    args = case.build(ctx)
    env = {k: v for k, v in os.environ.items() if k not in ("MEDCL_TRACEBACK", "MEDCL_ALLOW_PICKLE")}
    env.update(WANDB_MODE="offline", PYTHONPATH=str(REPO), **case.env)
    out = subprocess.run(medcl_command() + args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 1, out.stderr[-2000:]
    (line,) = error_lines(out.stderr)
    assert "Traceback" not in out.stderr
    assert all(f in line for f in case.fragments), line
    assert not run_folders(tmp_path / "out")


@pytest.mark.parametrize("drop_last", [False, True])
def test_a_one_sample_last_batch_with_batchnorm_is_refused_before_training_or_dropped(tmp_path, drop_last):
    """ResNet towers have BatchNorm, which cannot train on one sample: 65 images at batch 64 would fail at the
    end of the epoch; MedCL refuses before training and names the domain, or drops the batch with drop_last."""
    import pytorch_lightning as pl

    from data_modules import DomainStream, MedMNISTDataModule
    from framework.paradigms import ContinualModule

    stream = DomainStream([MedMNISTDataModule("bloodmnist", data_dir="data/demo/medmnist", train_subset=65, val_subset=8, test_subset=8,
                                              batch_size=64, drop_last=drop_last)])
    module = ContinualModule(backbone="medcl-resnet18-tiny", head_args={"classification": {"learn_class_embeddings": True}})
    trainer = pl.Trainer(accelerator="cpu", max_epochs=1, logger=False, enable_progress_bar=False, enable_checkpointing=False,
                         enable_model_summary=False, limit_val_batches=0, default_root_dir=str(tmp_path))
    if drop_last:
        trainer.fit(module, datamodule=stream)
        assert trainer.global_step == 1  # 65 images: one batch of 64, the single leftover dropped
    else:
        with pytest.raises(ValueError, match=r"BatchNorm .* bloodmnist \(65 training samples, batch_size 64\) holds one; set drop_last: true"):
            trainer.fit(module, datamodule=stream)
