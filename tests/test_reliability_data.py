"""No silent wrong results on the data side (issue 21).

* NIfTI images and masks are reoriented to RAS before they are paired; grids that still differ,
  a header without orientation next to a reoriented file, and 4D NIfTI files are refused;
* survival CSV columns (and .npz fields) must be named exactly (``Split`` is not ``split``);
* a segmentation split of mixed image sizes is refused at setup, naming the odd file;
* all-background masks and degenerate survival splits (all times 0, no event) warn once per task;
* ``medcl predict`` on a folder says what it skipped and what it resized, and gives every file its
  own id (and mask file name).
"""
import csv
import warnings
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import write_npz
from data_modules.io import read_array
from data_modules.prediction import PredictionSource, unique_ids
from data_modules.segmentation import SegmentationDataModule
from data_modules.survival import SurvivalDataModule
from framework.callbacks import PredictionWriter
from framework.core.specs import TaskSpec

SPLITS = ("train", "val", "test")
RAS = np.diag([0.8, 0.7, 2.5, 1.0])
RAS[:3, 3] = [-12.0, 30.0, 4.0]


# ------------------------------------------------------------------------------------------ helpers
def _save_nii(path, array, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def _as_lps(array, affine):
    """The same voxels on the same grid, stored LPS: axes 0 and 1 flipped, the affine to match."""
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[0, 3], flip[1, 3] = array.shape[0] - 1, array.shape[1] - 1
    return np.ascontiguousarray(array[::-1, ::-1]), affine @ flip


def _pair(shape):
    """A mask with an asymmetric foreground and an image that is bright exactly there."""
    mask = np.zeros(shape, np.uint8)
    mask[1:3, 1:4] = 1  # rows 1-2, columns 1-3: a flip along axis 0 or 1 moves it
    image = (mask * 200 + 20).astype(np.uint8)
    return image, mask


def _nifti_folder(root, shape, store_image="ras", store_mask="ras", mask_affine=None):
    """root/{train,val,test}/{images,masks}/case0.nii.gz; returns the true (image, mask) in RAS order."""
    image, mask = _pair(shape)
    for split in SPLITS:
        for kind, array, stored in (("images", image, store_image), ("masks", mask, store_mask)):
            data, affine = (array, RAS) if stored == "ras" else _as_lps(array, RAS)
            if kind == "masks" and mask_affine is not None:
                affine = mask_affine
            _save_nii(root / split / kind / "case0.nii.gz", data, affine)
    return image, mask


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _png_folder(root, sizes=None, empty_masks=()):
    """root/{split}/{images,masks}/case<i>.png, RGB; ``sizes``: {(split, i): (H, W)} (default 12x16)."""
    rng = np.random.default_rng(0)
    for split in SPLITS:
        for i in range(2):
            h, w = (sizes or {}).get((split, i), (12, 16))
            mask = np.zeros((h, w), np.uint8)
            if split not in empty_masks:
                mask[2:6, 3:9] = 255
            _png(root / split / "images" / f"case{i}.png", rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
            _png(root / split / "masks" / f"case{i}.png", mask)
    return root


def _survival_folder(tmp_path, rows, header="id,time,event,split"):
    folder = tmp_path / "surv"
    folder.mkdir()
    for pid, *_ in rows:
        _png(folder / f"{pid}.png", np.full((6, 8), 10 * int(pid[1:]), np.uint8))
    table = tmp_path / "survival.csv"
    table.write_text("\n".join([header] + [",".join(map(str, r)) for r in rows]) + "\n")
    return folder, table


SURVIVAL_ROWS = [(f"p{i}", 1.5 * (i + 1), i % 2, "train" if i < 6 else "val" if i < 8 else "test") for i in range(10)]


def _messages(record):
    return [str(w.message) for w in record]


# ------------------------------------------------------------------------------------------ 1. NIfTI geometry
@pytest.mark.parametrize("store_image, store_mask", [("ras", "lps"), ("lps", "ras")], ids=["mask-lps", "image-lps"])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_nifti_image_and_mask_in_other_orientations_are_paired_in_ras(tmp_path, spatial_dims, store_image, store_mask):
    shape = (6, 8) if spatial_dims == 2 else (6, 8, 3)
    image, mask = _nifti_folder(tmp_path / "ct", shape, store_image, store_mask)
    dm = SegmentationDataModule(root=str(tmp_path / "ct"), in_channels=1, spatial_dims=spatial_dims, augment=False)
    dm.setup()
    item = dm.dataset("train")[0]
    served = mask if spatial_dims == 2 else mask.transpose(2, 1, 0)  # volumes: (Z, Y, X), axial slices
    assert tuple(item["image"].shape) == (1, *served.shape)
    assert np.array_equal(item["target"].numpy(), served)  # RAS order, whichever way each file was stored
    assert np.array_equal(item["target"].numpy(), (item["image"][0].numpy() > 100).astype(np.uint8))  # voxel-aligned


def test_lps_volume_is_read_in_ras_order(tmp_path):
    image, _ = _pair((6, 8, 3))
    data, affine = _as_lps(image, RAS)
    assert np.array_equal(read_array(_save_nii(tmp_path / "lps.nii.gz", data, affine))[0], image)


@pytest.mark.parametrize(
    "change, what",
    [("origin", lambda a: a + np.pad(np.array([[0, 0, 0, 5.0]]), ((0, 3), (0, 0)))), ("spacing", lambda a: a @ np.diag([2.0, 1, 1, 1]))],
    ids=["origin", "spacing"],
)
def test_nifti_mask_on_another_grid_is_refused_naming_both_files_and_affines(tmp_path, change, what):
    root = tmp_path / "ct"
    _nifti_folder(root, (6, 8, 3), mask_affine=what(RAS.copy()))
    dm = SegmentationDataModule(root=str(root), in_channels=1, spatial_dims=3, augment=False)
    with pytest.raises(ValueError) as err:
        dm.setup()
    message = str(err.value)
    assert message.startswith(f"{root}/train/masks/case0.nii.gz: field 'mask' expected the grid of its image {root}/train/images/case0.nii.gz")
    assert "image affine [0.8 0 0 -12; 0 0.7 0 30; 0 0 2.5 4] (stored RAS)" in message
    assert "mask affine [" in message and "resample the mask" in message and "\n" not in message


def test_mask_without_orientation_next_to_a_flipped_image_is_refused(tmp_path):
    root = tmp_path / "ct"
    _nifti_folder(root, (6, 8, 3), store_image="lps")
    for split in SPLITS:  # a mask written without any affine: qform_code = sform_code = 0
        mask = np.asarray(nib.load(str(root / split / "masks" / "case0.nii.gz")).dataobj)
        nib.save(nib.Nifti1Image(mask, None), str(root / split / "masks" / "case0.nii.gz"))
    dm = SegmentationDataModule(root=str(root), in_channels=1, spatial_dims=3, augment=False)
    with pytest.raises(ValueError, match=r"train/masks/case0.nii.gz: field 'mask' cannot be aligned with its image .*"
                                         r"train/masks/case0.nii.gz has no orientation in its header .*images/case0.nii.gz is stored LPS"):
        dm.setup()


def test_4d_nifti_is_refused_with_its_shape(tmp_path):
    path = _save_nii(tmp_path / "dynamic.nii.gz", np.zeros((6, 8, 3, 2), np.float32), RAS)
    with pytest.raises(ValueError, match=r"dynamic.nii.gz: expected a 2D image \(X, Y\) or a 3D volume \(X, Y, Z\), found a 4D "
                                         r"NIfTI of shape \(6, 8, 3, 2\); MedCL does not guess whether a 4th axis holds time"):
        read_array(path)
    single = _save_nii(tmp_path / "single.nii.gz", np.zeros((6, 8, 3, 1), np.float32), RAS)
    assert read_array(single).shape == (1, 6, 8, 3)  # a 4th axis of size 1 is unambiguous


def test_4d_nifti_is_not_read_as_channels_by_a_two_channel_task(tmp_path):
    root = tmp_path / "ct"
    _nifti_folder(root, (6, 8, 3))
    _save_nii(root / "train" / "images" / "case0.nii.gz", np.zeros((6, 8, 3, 2), np.float32), RAS)
    dm = SegmentationDataModule(root=str(root), in_channels=2, spatial_dims=3, augment=False)
    with pytest.raises(ValueError, match=r"train/images/case0.nii.gz: expected .* found a 4D NIfTI of shape \(6, 8, 3, 2\)"):
        dm.setup()


# ------------------------------------------------------------------------------------------ 2. survival column names
@pytest.mark.parametrize(
    "header, expected",
    [
        ("id,time,event,Split", "column 'Split' looks like 'split'"),
        ("id,time,event,SPLIT", "column 'SPLIT' looks like 'split'"),
        ("id,time,event,splits", "column 'splits' looks like 'split'"),
        ("ID,time,event,split", "column 'ID' looks like 'id'"),
        ("id,Time,event,split", "column 'Time' looks like 'time'"),
        ("id,time,evnt,split", "column 'evnt' looks like 'event'"),
    ],
)
def test_survival_column_named_almost_right_is_refused(tmp_path, header, expected):
    folder, table = _survival_folder(tmp_path, SURVIVAL_ROWS, header=header)
    with pytest.raises(ValueError) as err:
        SurvivalDataModule(str(folder), table=str(table)).task_spec
    message = str(err.value)
    assert message.startswith(f"{table}: {expected} but column names must match exactly") and "\n" not in message
    if "plit" in header and "split" not in header.split(","):
        assert "without 'split' the rows would be split at random" in message


def test_survival_column_in_two_spellings_is_refused(tmp_path):
    rows = [r + (r[3],) for r in SURVIVAL_ROWS]
    folder, table = _survival_folder(tmp_path, rows, header="id,time,event,split,Split")
    with pytest.raises(ValueError, match=r"column 'Split' looks like 'split' .*; the columns also hold 'split': keep one"):
        SurvivalDataModule(str(folder), table=str(table)).task_spec


def test_survival_extra_columns_unlike_known_names_are_accepted(tmp_path):
    rows = [r + ("A", f"x{i}") for i, r in enumerate(SURVIVAL_ROWS)]
    folder, table = _survival_folder(tmp_path, rows, header="id,time,event,split,site,pid")
    dm = SurvivalDataModule(str(folder), table=str(table))
    assert dm.ids("test") == ["p8", "p9"]  # the split column is honoured


def test_survival_npz_field_named_almost_right_is_refused(tmp_path):
    path = write_npz(tmp_path / "surv.npz", {
        "images": np.zeros((10, 6, 8), np.uint8), "time": np.linspace(1, 10, 10), "event": np.arange(10) % 2,
        "Split": np.array([0] * 6 + [1] * 2 + [2] * 2),
    })
    with pytest.raises(ValueError, match=r"surv.npz: field 'Split' looks like 'split' but field names must match exactly"):
        SurvivalDataModule(str(path)).task_spec


# ------------------------------------------------------------------------------------------ 3. mixed sizes
def test_segmentation_split_of_mixed_sizes_is_refused_at_setup(tmp_path):
    root = _png_folder(tmp_path / "polyps", sizes={("val", 1): (10, 16)})
    dm = SegmentationDataModule(root=str(root))
    with pytest.raises(ValueError) as err:
        dm.setup()
    assert str(err.value) == (
        f"{root}/val/images/case1.png: field 'image' expected the size of the first image of the 'val' split (case0.png) "
        f"(12, 16), found (10, 16); batches are stacked, so the images (and masks) of a split must have one size: resize them"
    )


# ------------------------------------------------------------------------------------------ 4. degenerate targets
def test_all_background_training_masks_warn_once_naming_task_and_split(tmp_path):
    root = _png_folder(tmp_path / "polyps", empty_masks=("train",))
    dm = SegmentationDataModule(root=str(root), label_names=["polyp"])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dm.setup()
        dm.setup()  # idempotent: no second warning
    found = [m for m in _messages(record) if "foreground" in m]
    assert found == [
        "SegmentationDataModule(polyps): no foreground in the 'train' split (all 2 masks): every pixel is background, none "
        "has label 1 = 'polyp'; the model would learn to predict background only: check the mask files"
    ]


def test_all_background_npz_masks_warn(tmp_path):
    masks = np.zeros((10, 8, 8), np.uint8)
    masks[6:, 2:4, 2:4] = 1  # val and test have foreground, train none
    path = write_npz(tmp_path / "lesions.npz", {"images": np.zeros((10, 8, 8, 3), np.uint8), "masks": masks,
                                               "split": np.array([0] * 6 + [1] * 2 + [2] * 2)})
    with pytest.warns(UserWarning, match=r"SegmentationDataModule\(lesions\): no foreground in the 'train' split \(all 6 masks\)"):
        SegmentationDataModule(file=str(path)).setup()


def test_degenerate_survival_splits_warn_once_naming_task_and_splits(tmp_path):
    rows = [(pid, 0 if split == "train" else time, 0 if split == "test" else 1, split) for pid, time, _, split in SURVIVAL_ROWS]
    folder, table = _survival_folder(tmp_path, rows)
    dm = SurvivalDataModule(str(folder), table=str(table), task_name="lung_os", num_time_bins=4)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        dm.setup()
        dm.setup()
    found = [m for m in _messages(record) if "comparable pair" in m]
    assert found == [
        f"SurvivalDataModule(lung_os): every time in the 'train' split is 0 (6 samples); the 'test' split holds no event "
        f"(2 samples, all censored); such a split has no comparable pair (its C-index is undefined) and teaches a model "
        f"nothing: check the survival data ({table})"
    ]


# ------------------------------------------------------------------------------------------ 5. medcl predict on a folder
SEG_SPEC = TaskSpec(name="polyps", kind="segmentation", label_names=("polyp",), in_channels=3)


def _predict_folder(tmp_path):
    folder = tmp_path / "to_predict"
    rng = np.random.default_rng(0)
    for name, size in (("case1.png", (8, 8)), ("case1.jpg", (8, 8)), ("case1.PNG", (8, 8)), ("other.png", (12, 16))):
        _png(folder / name, rng.integers(0, 256, (*size, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_folder_says_what_it_skipped_and_resized(tmp_path):
    folder = _predict_folder(tmp_path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        source = PredictionSource(folder, SEG_SPEC, input_size=(8, 8))
    messages = _messages(record)
    assert (f"predict: skipped 1 file with unsupported suffix ['.txt']: notes.txt in {folder} "
            f"(MedCL reads .nii.gz, .nii, .dcm, .png, .jpg, .jpeg, and DICOM series as sub-folders of .dcm files)") in messages
    assert (f"predict: resized 1 of 4 images in {folder} from (12, 16) (first: other.png) to the model input (8, 8) of task "
            f"'polyps'; predicted masks are resized back to each image's size; an image of another aspect ratio is stretched") in messages
    assert len(source) == 4


def test_predict_folder_gives_every_file_its_own_id_and_mask_file(tmp_path):
    folder = _predict_folder(tmp_path)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        source = PredictionSource(folder, SEG_SPEC)
    assert (f"predict: 3 files in {folder} share a name without their ending, so their ids (and mask file names) are their "
            f"whole file names: case1.PNG, case1.jpg, case1.png") in _messages(record)
    ids = [source[i]["id"] for i in range(len(source))]
    assert ids == ["case1.PNG", "case1.jpg", "case1.png", "other"]
    # the writer names mask files after the ids: one file per input, one CSV row per id
    head = SimpleNamespace(spec=SimpleNamespace(num_classes=2, depth_axis="stored"), column_names=lambda key, n: [key])
    module = SimpleNamespace(model_for=lambda task: SimpleNamespace(head=lambda task: head))
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    trainer = SimpleNamespace(log_dir=None, default_root_dir=str(tmp_path), is_global_zero=True)
    writer.on_predict_start(trainer, module)
    masks = torch.stack([torch.full((8, 8), i % 2, dtype=torch.uint8) for i in range(4)])
    prediction = {"polyps": {"id": ids, "mask": masks, "area": torch.tensor([0.0, 1.0, 0.0, 1.0])}}
    writer.write_on_batch_end(trainer, module, prediction, None, None, 0, 0)
    writer.on_predict_end(trainer, module)
    written = sorted(p.name for p in (tmp_path / "out" / "polyps" / "masks").iterdir())
    assert written == ["case1.PNG.png", "case1.jpg.png", "case1.png.png", "other.png"]
    with open(tmp_path / "out" / "polyps" / "predictions.csv") as fh:
        assert [row["id"] for row in csv.DictReader(fh)] == ids


@pytest.mark.parametrize(
    "names, expected",
    [
        (["a.png", "b.png"], ["a", "b"]),
        (["Case1.png", "case1.jpg"], ["Case1.png", "case1.jpg"]),  # mask files Case1.png / case1.png would clash on macOS
        (["a.png", "a.jpg", "a.png.png"], ["a.png", "a.jpg", "a.png.png"]),  # a whole name equal to another file's id
        (["v.nii.gz", "v.png"], ["v.nii.gz", "v.png"]),
    ],
)
def test_unique_ids(tmp_path, names, expected):
    ids = unique_ids([tmp_path / n for n in names])
    assert ids == expected and len(set(ids)) == len(ids)


@pytest.mark.parametrize("depth_axis", ["stored", "axial"])
def test_a_predicted_volume_mask_lies_on_its_input_grid_not_mirrored(tmp_path, depth_axis):
    """An LPS input's predicted mask, written with the affine it was read on, overlays the input in
    world coordinates (a viewer, or nibabel's canonical view of both files, shows the same voxels),
    whether the task slices along the stored first axis or axially (served (Z, Y, X), written back (X, Y, Z))."""
    image, truth = _pair((6, 8, 3))
    data, affine = _as_lps(image, RAS)
    folder = tmp_path / "to_predict"
    _save_nii(folder / "case0.nii.gz", data, affine)
    spec = TaskSpec(name="organ3d", kind="segmentation", label_names=("organ",), in_channels=1, spatial_dims=3, depth_axis=depth_axis)
    source = PredictionSource(folder, spec)
    item = source[0]
    assert item["image"].shape[1:] == ((6, 8, 3) if depth_axis == "stored" else (3, 8, 6))
    predicted = (item["image"][0] > 0.5).to(torch.uint8)  # a perfect "model": the bright voxels, in the order served
    head = SimpleNamespace(spec=spec, column_names=lambda key, n: [key])
    module = SimpleNamespace(model_for=lambda task: SimpleNamespace(head=lambda task: head))
    writer = PredictionWriter(output_dir=str(tmp_path / "out"))
    trainer = SimpleNamespace(log_dir=None, default_root_dir=str(tmp_path), is_global_zero=True)
    writer.on_predict_start(trainer, module)
    prediction = {"organ3d": {"id": [item["id"]], "mask": predicted[None], "affine": item["affine"][None]}}
    writer.write_on_batch_end(trainer, module, prediction, None, None, 0, 0)
    writer.on_predict_end(trainer, module)
    written = nib.load(str(tmp_path / "out" / "organ3d" / "masks" / "case0.nii.gz"))
    original = nib.load(str(folder / "case0.nii.gz"))
    assert np.allclose(nib.as_closest_canonical(written).affine, nib.as_closest_canonical(original).affine)
    assert np.array_equal(np.asarray(nib.as_closest_canonical(written).dataobj), truth)
    assert written.header["descrip"].item() == b""  # geometry only
