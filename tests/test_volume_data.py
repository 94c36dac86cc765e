"""VolumeDataModule (data_modules/volumes.py): lazy MONAI loading, CT windows, spacing, caches, manifests.

* a CT task's items equal the documented Hounsfield-unit window, laid out axially;
* resampling to a target spacing moves image and mask together, and an LPS image with its RAS mask stays aligned;
* DICOM series load, and no patient identifier reaches the disk cache;
* the disk cache is read instead of the files the second time, and is not reused after a file or a setting changes;
* a missing, near-miss or wrongly valued ``split`` column is refused (never ignored);
* classification labels by name or index, prognosis time grids from the training rows.
"""
import numpy as np
import pytest
import torch
import yaml

import data_modules.volumes as volumes_module
from data_modules.intensity import CT_WINDOWS
from data_modules.synthetic import synthetic_ct, write_dicom_series, write_nifti
from data_modules.volumes import VolumeDataModule

SPACING = (0.8, 0.8, 2.5)
PATIENT = "DOE^JANE-VOLUME-4711"


def _collection(folder, n=5, shape=(24, 20, 6), dicom=False, affine=None):
    """n synthetic CT volumes + masks and a manifest (3 train, 1 val, 1 test); returns (manifest, {i: (hu, mask)})."""
    folder.mkdir(parents=True, exist_ok=True)
    rows, truth = ["image,mask,split"], {}
    for i in range(n):
        volume, mask = synthetic_ct(shape, seed=i)
        volume = np.round(volume)
        split = "train" if i < n - 2 else "val" if i == n - 2 else "test"
        if dicom:
            origin = (-100.0, -120.0, 40.0)
            lps_to_ras = np.array([[-SPACING[0], 0, 0, -origin[0]], [0, -SPACING[1], 0, -origin[1]], [0, 0, SPACING[2], origin[2]], [0, 0, 0, 1]])
            write_dicom_series(folder / f"case{i}", volume, spacing=SPACING, origin=origin, patient_name=PATIENT, patient_id="MRN-4711")
            write_nifti(folder / f"case{i}_mask.nii.gz", mask, affine=lps_to_ras)
            rows.append(f"case{i},case{i}_mask.nii.gz,{split}")
        else:
            write_nifti(folder / f"case{i}.nii.gz", volume, spacing=SPACING, affine=affine)
            write_nifti(folder / f"case{i}_mask.nii.gz", mask, spacing=SPACING, affine=affine)
            rows.append(f"case{i}.nii.gz,case{i}_mask.nii.gz,{split}")
        truth[i] = volume, mask
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    return folder / "manifest.csv", truth


def _module(table, **kwargs):
    args = dict(table=str(table), task_name="ct_organ", label_names=["organ"], intensity="ct:abdomen", augment=False, cache="none")
    args.update(kwargs)
    dm = VolumeDataModule(**args)
    dm.setup("fit")
    return dm


@pytest.mark.parametrize("cache", ["none", "memory", "disk"])
def test_ct_items_equal_the_documented_window_laid_out_axially(tmp_path, cache):
    table, truth = _collection(tmp_path / "ct")
    dm = _module(table, cache=cache, cache_dir=str(tmp_path / "cache"))
    assert dm.task_spec.intensity == "ct:abdomen" and dm.task_spec.depth_axis == "axial"
    low, high = CT_WINDOWS["abdomen"]
    for split, index in (("val", 3), ("test", 4)):
        item = dm.dataset(split)[0]
        volume, mask = truth[index]
        assert item["image"].shape == (1, 6, 20, 24) and item["image"].dtype == torch.float32
        np.testing.assert_allclose(item["image"][0].numpy(), np.clip((volume - low) / (high - low), 0, 1).transpose(2, 1, 0), atol=1e-6)
        np.testing.assert_array_equal(item["target"].numpy(), mask.transpose(2, 1, 0))


def test_spacing_resamples_image_and_mask_together(tmp_path):
    table, truth = _collection(tmp_path / "ct", shape=(32, 28, 6))
    dm = _module(table, spacing=[1.6, 1.6, 2.5])
    item = dm.dataset("test")[0]
    assert item["image"].shape == (1, 6, 15, 17)  # MONAI keeps the extent: (28 - 1) * 0.8 / 1.6 + 1 -> 15, (32 - 1) * 0.5 + 1 -> 17
    assert set(np.unique(item["target"].numpy())) <= {0, 1}  # nearest neighbour: labels stay labels
    organ, rest = item["image"][0][item["target"] == 1], item["image"][0][item["target"] == 0]
    assert organ.numel() > 0 and float(organ.mean()) > float(rest.mean()) + 0.2  # the mask still covers the organ
    _, mask = truth[4]
    assert abs(int(item["target"].sum()) - mask.sum() / 4) <= 0.25 * mask.sum() / 4 + 4  # a quarter of the voxels in-plane


def test_an_lps_image_and_its_ras_mask_stay_aligned(tmp_path):
    volume, mask = synthetic_ct((24, 20, 6), seed=1)
    folder = tmp_path / "mixed"
    rows = ["image,mask,split"]
    lps = np.diag([-SPACING[0], -SPACING[1], SPACING[2], 1.0])
    lps[:3, 3] = [(24 - 1) * SPACING[0], (20 - 1) * SPACING[1], 0.0]  # the same world grid, stored flipped
    for split in ("train", "val", "test"):
        write_nifti(folder / f"{split}.nii.gz", volume[::-1, ::-1].copy(), affine=lps)  # image stored LPS
        write_nifti(folder / f"{split}_mask.nii.gz", mask, spacing=SPACING)  # mask stored RAS
        rows.append(f"{split}.nii.gz,{split}_mask.nii.gz,{split}")
    (folder / "manifest.csv").write_text("\n".join(rows) + "\n")
    dm = _module(folder / "manifest.csv", spacing=[1.6, 1.6, 2.5])
    item = dm.dataset("test")[0]
    organ, rest = item["image"][0][item["target"] == 1], item["image"][0][item["target"] == 0]
    assert organ.numel() > 0 and float(organ.mean()) > float(rest.mean()) + 0.2


def test_dicom_series_load_and_no_identifier_reaches_the_cache(tmp_path):
    table, truth = _collection(tmp_path / "dicom", dicom=True)
    dm = _module(table, cache="disk", cache_dir=str(tmp_path / "cache"))
    low, high = CT_WINDOWS["abdomen"]
    for split in ("train", "val", "test"):
        for i in range(len(dm.dataset(split))):
            dm.dataset(split)[i]  # fills the cache
    item = dm.dataset("test")[0]
    volume, mask = truth[4]
    # a DICOM series stored LPS, read in RAS: both in-plane axes flipped, then laid out axially
    np.testing.assert_allclose(item["image"][0].numpy(), np.clip((volume[::-1, ::-1] - low) / (high - low), 0, 1).transpose(2, 1, 0), atol=1e-6)
    np.testing.assert_array_equal(item["target"].numpy(), mask[::-1, ::-1].transpose(2, 1, 0))
    cached = [p for p in (tmp_path / "cache").rglob("*") if p.is_file()]
    assert len(cached) == 5
    planted = [p for p in (tmp_path / "dicom").rglob("*.dcm") if PATIENT.encode() in p.read_bytes()]
    assert planted  # the check finds the name where it is
    assert not [p for p in cached if PATIENT.encode() in p.read_bytes() or b"MRN-4711" in p.read_bytes()]


def test_disk_cache_is_read_instead_of_the_files_and_never_stale(tmp_path, monkeypatch):
    table, _ = _collection(tmp_path / "ct")
    reads = []
    original = volumes_module.read_array_with_geometry
    monkeypatch.setattr(volumes_module, "read_array_with_geometry", lambda path: reads.append(str(path)) or original(path))
    first = _module(table, cache="disk", cache_dir=str(tmp_path / "cache"))
    a = first.dataset("test")[0]["image"]
    assert len(reads) == 2  # image and mask
    again = _module(table, cache="disk", cache_dir=str(tmp_path / "cache"))
    torch.testing.assert_close(again.dataset("test")[0]["image"], a)
    assert len(reads) == 2  # served from the cache
    other_window = _module(table, cache="disk", cache_dir=str(tmp_path / "cache"), intensity="ct:lung")
    other_window.dataset("test")[0]
    assert len(reads) == 4 and other_window.cache_folder() != again.cache_folder()  # another setting, another cache
    volume, mask = synthetic_ct((24, 20, 6), seed=99)
    write_nifti(tmp_path / "ct" / "case4.nii.gz", np.round(volume) + 1.0, spacing=SPACING)  # the file is replaced
    replaced = _module(table, cache="disk", cache_dir=str(tmp_path / "cache"))
    b = replaced.dataset("test")[0]["image"]
    assert len(reads) == 6 and not torch.equal(a, b)


def test_memory_cache_respects_its_budget(tmp_path):
    table, _ = _collection(tmp_path / "ct")
    dm = _module(table, cache="memory", cache_memory_gb=1e-5)  # 10 kB: one 24x20x6 float32 item (11.5 kB + mask) at most
    assert dm.dataset("train").base.cache_num == 1


@pytest.mark.parametrize("header, rows, message", [
    ("image,mask", ["case0.nii.gz,case0_mask.nii.gz"], r"column\(s\) \['split'\] expected for kind 'segmentation'.*never splits a collection at random"),
    ("image,mask,Split", ["case0.nii.gz,case0_mask.nii.gz,train"], r"column 'Split' looks like 'split' but column names must match exactly"),
    ("image,mask,splits", ["case0.nii.gz,case0_mask.nii.gz,train"], r"column 'splits' looks like 'split'"),
    ("image,mask,split", ["case0.nii.gz,case0_mask.nii.gz,training"], r"manifest.csv:2: field 'split' expected one of \['train', 'val', 'test'\], found 'training'"),
    ("image,mask,split", ["case0.nii.gz,missing.nii.gz,train"], r"manifest.csv:2: field 'mask' file not found: .*missing.nii.gz"),
])
def test_a_split_column_cannot_be_ignored_and_bad_rows_are_named(tmp_path, header, rows, message):
    table, _ = _collection(tmp_path / "ct")
    table.write_text("\n".join([header, *rows]) + "\n")
    with pytest.raises((ValueError, FileNotFoundError), match=message):
        _module(table)


def test_a_split_without_items_is_refused(tmp_path):
    table, _ = _collection(tmp_path / "ct")
    table.write_text("image,mask,split\ncase0.nii.gz,case0_mask.nii.gz,train\ncase1.nii.gz,case1_mask.nii.gz,test\n")
    with pytest.raises(ValueError, match=r"split 'val' expected at least one item, found none"):
        _module(table)


def test_classification_and_prognosis_manifests(tmp_path):
    _collection(tmp_path / "ct")
    labels = ["small", "large", "small", "large", "small"]
    (tmp_path / "ct" / "cls.csv").write_text("image,label,split\n" + "".join(
        f"case{i}.nii.gz,{label if i % 2 else labels.index(label)},{'train' if i < 3 else 'val' if i == 3 else 'test'}\n"
        for i, label in enumerate(labels)))
    dm = _module(tmp_path / "ct" / "cls.csv", kind="classification", class_names=["small", "large"], label_names=None)
    assert [int(dm.dataset("train")[i]["target"]) for i in range(3)] == [0, 1, 0]
    (tmp_path / "ct" / "bad.csv").write_text("image,label,split\ncase0.nii.gz,medium,train\n")
    with pytest.raises(ValueError, match=r"bad.csv:2: field 'label' expected one of \['small', 'large'\] or an index 0..1, found 'medium'"):
        _module(tmp_path / "ct" / "bad.csv", kind="classification", class_names=["small", "large"], label_names=None)
    (tmp_path / "ct" / "surv.csv").write_text("image,time,event,split\n" + "".join(
        f"case{i}.nii.gz,{3.0 + i},{i % 2},{'train' if i < 3 else 'val' if i == 3 else 'test'}\n" for i in range(5)))
    dm = _module(tmp_path / "ct" / "surv.csv", kind="prognosis", label_names=None, num_time_bins=2)
    assert dm.task_spec.kind == "prognosis" and len(dm.task_spec.time_bins) >= 1
    torch.testing.assert_close(dm.dataset("test")[0]["target"], torch.tensor([7.0, 0.0]))


@pytest.mark.parametrize("kwargs, message", [
    ({"cache": "ram"}, r"cache expected one of \['none', 'memory', 'disk'\], found 'ram'"),
    ({"spacing": [1.0, 1.0]}, r"spacing expected null or 3 positive numbers \(mm\), found \[1.0, 1.0\]"),
    ({"spatial_size": [8, 16]}, r"spatial_size expected null or 3 positive integers"),
    ({"kind": "detection"}, r"kind expected one of \['segmentation', 'classification', 'prognosis'\]"),
    ({"intensity": "ct:kidney"}, r"VolumeDataModule: field 'intensity' expected 'ct:<window>'"),
    ({"root": "x"}, r"expected exactly one of table \(a CSV manifest\) or root \(a folder\), found both"),
])
def test_bad_arguments_are_refused(tmp_path, kwargs, message):
    args = dict(table=str(tmp_path / "m.csv"))
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        VolumeDataModule(**args)


@pytest.mark.slow
def test_a_ct_collection_trains_and_tests_in_a_stream(tmp_path):
    """The quickstart's model learns a CT segmentation task read lazily from NIfTI files through the disk cache."""
    from conftest import REPO
    from framework.cli import run_cli
    from helpers import load_config

    table, _ = _collection(tmp_path / "ct", n=6)
    config = load_config(REPO / "experiments/quickstart.yaml")
    config["model"]["init_args"].update(epochs_per_experience=1, head_args={"segmentation": {"feature_size": 8}})
    config["data"]["init_args"]["domains"] = [{"class_path": "data_modules.VolumeDataModule", "init_args": {
        "table": str(table), "task_name": "ct_organ", "label_names": ["organ"], "intensity": "ct:abdomen",
        "spacing": [1.6, 1.6, 2.5], "spatial_size": [6, 16, 16], "cache": "disk", "cache_dir": str(tmp_path / "cache"), "batch_size": 2}}]
    out = tmp_path / "run"
    trainer = config["trainer"]
    trainer.update(max_epochs=1, default_root_dir=str(out), enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    trainer["logger"] = [{"class_path": "pytorch_lightning.loggers.CSVLogger", "init_args": {"save_dir": str(out), "name": "ct"}}]
    trainer["callbacks"] = [c for c in trainer["callbacks"] if not c["class_path"].endswith("ReplayCallback")]
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    cli = run_cli(["fit", "--config", str(cfg)])
    assert cli.model.task_specs["ct_organ"].depth_axis == "axial"
    (metrics,) = out.rglob("continual_metrics.json")
    import json

    final = json.loads(metrics.read_text())
    assert "ct_organ" in json.dumps(final)
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == 6  # every item cached once
