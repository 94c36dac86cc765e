"""SegmentationDataModule: .npz and folder sources, validation messages, augmentation."""
import pickle

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import REPO, write_npz
from data_modules.segmentation import (
    SegmentationDataModule,
    SegmentationDataset,
    load_segmentation_folder,
    load_segmentation_npz,
)
from framework.core.specs import TaskSpec

SHARED_SEG = REPO.parent / "shared" / "data" / "segmentation"


# ------------------------------------------------------------------------------------------ helpers
@pytest.fixture
def seg_npz(tmp_path):
    """Write a small segmentation .npz; keyword overrides replace or drop (None) arrays.

    Images are RGB 16x16 whose red channel is mask * 255 (so image/mask alignment is checkable);
    split is 6 train / 2 val / 2 test.
    """

    def _make(name="toy.npz", **overrides):
        rng = np.random.default_rng(0)
        masks = (rng.random((10, 16, 16)) > 0.7).astype(np.uint8)
        images = rng.integers(0, 256, size=(10, 16, 16, 3), dtype=np.uint8)
        images[..., 0] = masks * 255
        arrays = {
            "images": images,
            "masks": masks,
            "split": np.array([0] * 6 + [1] * 2 + [2] * 2, dtype=np.uint8),
            "names": np.array([f"s{i}" for i in range(10)]),
        }
        return write_npz(tmp_path / name, arrays, **overrides)

    return _make


def _png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _nii(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))


@pytest.fixture
def png_folder(tmp_path):
    """root/{train,val,test}/{images,masks}/<id>.png: RGB 12x16 (H x W) images, 0/255 masks."""

    def _make(name="polyps", counts=(2, 1, 1), gray=False):
        root = tmp_path / name
        rng = np.random.default_rng(1)
        for split, count in zip(("train", "val", "test"), counts):
            for i in range(count):
                mask = (rng.random((12, 16)) > 0.5).astype(np.uint8) * 255
                image = rng.integers(0, 256, size=(12, 16) if gray else (12, 16, 3), dtype=np.uint8)
                _png(root / split / "images" / f"case{i}.png", image)
                _png(root / split / "masks" / f"case{i}.png", mask)
        return root

    return _make


# ------------------------------------------------------------------------------------------ real data
@pytest.mark.parametrize(
    "file, sizes", [("kvasir_seg_64.npz", (798, 100, 100)), ("cvc_clinicdb_64.npz", (445, 80, 84))]
)
def test_real_npz_splits_items_and_keyed_batches(file, sizes):
    path = SHARED_SEG / file
    if not path.is_file():
        pytest.skip("../shared/data/segmentation not present")
    dm = SegmentationDataModule(file=str(path), label_names=["polyp"], modality="endoscopy", batch_size=8)
    dm.setup("fit")
    task = file[:-4]
    assert dm.name == task
    assert tuple(len(dm.dataset(s)) for s in ("train", "val", "test")) == sizes
    with np.load(path) as raw:
        first_val = int(np.flatnonzero(raw["split"] == 1)[0])
        raw_image, raw_mask = raw["images"][first_val], raw["masks"][first_val]
    item = dm.dataset("val")[0]
    assert set(item) == {"image", "target"}
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.uint8  # the backbone divides by 255
    assert item["target"].shape == (64, 64) and item["target"].dtype == torch.int64
    assert set(item["target"].unique().tolist()) <= {0, 1}
    assert torch.equal(item["image"], torch.from_numpy(raw_image).permute(2, 0, 1))
    assert torch.equal(item["target"], torch.from_numpy(raw_mask).long())
    batch = next(iter(dm.loader("train")))
    assert set(batch) == {task}
    assert batch[task]["image"].shape == (8, 3, 64, 64) and batch[task]["target"].shape == (8, 64, 64)
    assert batch[task]["target"].dtype == torch.int64


# ------------------------------------------------------------------------------------------ npz source
def test_spec_is_known_before_setup():
    dm = SegmentationDataModule(file="nowhere/My Data.v2.npz", label_names=["liver", "tumour"], modality="ct", in_channels=1)
    assert dm.task_spec == TaskSpec(
        name="My_Data_v2", kind="segmentation", modality="ct", label_names=("liver", "tumour"), in_channels=1, spatial_dims=2
    )
    assert dm.task_spec.num_classes == 3
    with pytest.raises(RuntimeError, match="call setup"):
        dm.dataset("train")
    with pytest.raises(FileNotFoundError, match="My Data.v2.npz"):
        dm.setup()


@pytest.mark.parametrize("source, expected", [("data/3d-organs.npz", "seg_3d-organs"), ("a/b/kvasir/", "kvasir")])
def test_task_name_derived_from_source(source, expected):
    kwargs = {"file": source} if source.endswith(".npz") else {"root": source}
    assert SegmentationDataModule(**kwargs).name == expected


def test_npz_split_honoured_and_items_raw(seg_npz):
    path = seg_npz()
    data = load_segmentation_npz(path)
    assert [len(data[s]["images"]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert data["val"]["ids"] == ["s6", "s7"] and data["train"]["images"].shape == (6, 3, 16, 16)
    dm = SegmentationDataModule(file=str(path), task_name="toy")
    dm.setup()
    with np.load(path) as raw:
        for split, offset in (("val", 6), ("test", 8)):
            for i in range(2):
                item = dm.dataset(split)[i]
                assert item["image"].dtype == torch.uint8 and item["image"].is_contiguous()
                assert torch.equal(item["image"], torch.from_numpy(raw["images"][offset + i]).permute(2, 0, 1))
                assert torch.equal(item["target"], torch.from_numpy(raw["masks"][offset + i]).long())


def test_augmentation_keeps_image_and_mask_aligned(seg_npz):
    dm = SegmentationDataModule(file=str(seg_npz()), augment=True)
    dm.setup()
    train = dm.dataset("train")
    with np.load(dm.path) as raw:
        original = torch.from_numpy(raw["masks"][0]).long()
    torch.manual_seed(0)
    changed = False
    for _ in range(12):
        item = train[0]
        assert item["image"].shape == (3, 16, 16) and item["target"].dtype == torch.int64
        assert type(item["image"]) is torch.Tensor and type(item["target"]) is torch.Tensor
        assert item["image"].dtype == torch.uint8  # flips/rotations work on uint8: training items stay uint8
        assert torch.equal(item["image"][0], (item["target"] * 255).to(torch.uint8))  # red channel = mask * 255
        changed |= not torch.equal(item["target"], original)
    assert changed, "augmentation never changed the training item"
    # deterministic under torch.manual_seed, picklable for DataLoader workers
    torch.manual_seed(3)
    first = [train[0]["target"] for _ in range(4)]
    torch.manual_seed(3)
    assert all(torch.equal(a, train[0]["target"]) for a in first)
    clone = pickle.loads(pickle.dumps(train))
    item = clone[1]
    assert torch.equal(item["image"][0], (item["target"] * 255).to(torch.uint8))
    # val/test never augment
    assert dm.dataset("val").transform is None and dm.dataset("test").transform is None


def test_no_augmentation_when_disabled(seg_npz):
    dm = SegmentationDataModule(file=str(seg_npz()), augment=False)
    dm.setup()
    assert all(torch.equal(dm.dataset("train")[0]["target"], dm.dataset("train")[0]["target"]) for _ in range(5))
    assert dm.dataset("train").transform is None


def test_subsets_seeded_and_sized(seg_npz):
    path = seg_npz()

    def targets(seed):
        dm = SegmentationDataModule(file=str(path), augment=False, train_subset=3, val_subset=1, subset_seed=seed)
        dm.setup()
        assert (len(dm.dataset("train")), len(dm.dataset("val")), len(dm.dataset("test"))) == (3, 1, 2)
        return torch.stack([dm.dataset("train")[i]["target"] for i in range(3)])

    assert torch.equal(targets(0), targets(0))
    assert any(not torch.equal(targets(0), targets(s)) for s in (1, 2, 3))
    dm = SegmentationDataModule(file=str(path), test_subset=5)
    with pytest.raises(ValueError, match=r"test_subset=5 is larger than the 2 'test' samples in .*toy.npz"):
        dm.setup()


def test_npz_255_masks_and_float_images_accepted(seg_npz):
    rng = np.random.default_rng(0)
    images = rng.random((10, 16, 16)).astype(np.float32)
    masks = (rng.random((10, 16, 16)) > 0.5).astype(np.uint8) * 255
    dm = SegmentationDataModule(file=str(seg_npz(images=images, masks=masks)), in_channels=1, augment=False)
    dm.setup()
    item = dm.dataset("train")[0]
    assert item["image"].dtype == torch.float32  # float sources stay float
    assert item["image"].shape == (1, 16, 16) and torch.allclose(item["image"][0], torch.from_numpy(images[0]))
    assert torch.equal(item["target"], torch.from_numpy(masks[0] // 255).long())


def test_npz_3d_volumes(seg_npz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(10, 4, 8, 8), dtype=np.uint8)
    masks = rng.integers(0, 3, size=(10, 4, 8, 8)).astype(np.int16)
    path = seg_npz("vol.npz", images=images, masks=masks)
    dm = SegmentationDataModule(file=str(path), label_names=["a", "b"], in_channels=1, spatial_dims=3, batch_size=2)
    dm.setup()
    item = dm.dataset("train")[0]
    assert item["image"].shape == (1, 4, 8, 8) and item["target"].shape == (4, 8, 8)
    val = dm.dataset("val")[0]  # sample 6 (split 6/2/2), never augmented
    assert val["image"].dtype == torch.uint8 and torch.equal(val["image"][0], torch.from_numpy(images[6]))
    assert int(item["target"].max()) <= 2
    batch = next(iter(dm.loader("train")))["vol"]
    assert batch["image"].shape == (2, 1, 4, 8, 8) and batch["target"].shape == (2, 4, 8, 8)


def _bad_npz_cases():
    rng = np.random.default_rng(0)
    masks = (rng.random((10, 16, 16)) > 0.5).astype(np.uint8)
    return [
        ({"masks": None}, {}, r"bad.npz: missing key\(s\) \['masks'\]; expected keys .*found \['images', 'names', 'split'\]"),
        ({"images": np.zeros((10, 16, 16, 3), np.int16)}, {}, r"bad.npz: field 'images' expected dtype uint8 .*found int16"),
        ({"images": np.full((10, 16, 16, 3), 2.0, np.float32)}, {}, r"bad.npz: field 'images' expected uint8, or float values in \[0, 1\], found float32 values in \[2.0, 2.0\]"),
        ({"masks": masks[:9]}, {}, r"bad.npz: field 'masks' has 9 samples but 'images' has 10"),
        ({"split": np.zeros(11, np.uint8)}, {}, r"bad.npz: field 'split' has 11 samples but 'images' has 10"),
        ({"masks": masks[:, :8, :8]}, {}, r"bad.npz: field 'masks' expected the spatial shape of 'images' \(16, 16\) .*found \(8, 8\) \(first mismatch: sample 0\)"),
        ({"masks": masks * 2 + 1}, {}, r"bad.npz: field 'masks' expected binary values \{0,1\} \(or \{0,255\}\) for a task with one label, found values \[1, 3\]"),
        ({"masks": masks * 3}, {"label_names": ["a", "b"]}, r"bad.npz: field 'masks' expected label values in \[0, 2\] .*found values \[0, 3\]"),
        ({"masks": masks * 0.5}, {}, r"bad.npz: field 'masks' expected integer label values, found values \[0.5\]"),
        ({"split": np.array([0] * 8 + [1, 5], np.uint8)}, {}, r"bad.npz: field 'split' expected values in \{0, 1, 2\} \(train/val/test\), found values \[5\]"),
        ({"images": np.zeros((10, 16, 16), np.uint8)}, {}, r"bad.npz: field 'images' expected 3 channel\(s\) \(in_channels=3\), found 1 channel\(s\)"),
        ({"images": np.zeros((10, 16, 16, 16), np.uint8)}, {}, r"bad.npz: field 'images' expected 2D images .*the task is 2D-only, spatial_dims=2\), found a volume of shape \(10, 16, 16, 16\)"),
        ({"images": np.zeros((10, 4, 16, 16), np.uint8), "masks": np.zeros((10, 4, 16, 16), np.uint8)}, {"in_channels": 1},
         r"bad.npz: field 'masks' expected shape \(N, H, W\) \(the task is 2D-only, spatial_dims=2\), found volumes of shape \(10, 4, 16, 16\)"),
        ({}, {"spatial_dims": 3}, r"bad.npz: field 'masks' expected shape \(N, D, H, W\) \(the task is 3D, spatial_dims=3\), found 2D masks of shape \(10, 16, 16\)"),
    ]


@pytest.mark.parametrize("overrides, kwargs, message", _bad_npz_cases())
def test_bad_npz_named(seg_npz, overrides, kwargs, message):
    dm = SegmentationDataModule(file=str(seg_npz("bad.npz", **overrides)), **kwargs)
    with pytest.raises(ValueError, match=message):
        dm.setup()


def test_unreadable_npz_named(tmp_path):
    path = tmp_path / "junk.npz"
    path.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match=r"junk.npz: expected an .npz archive \(a zip file written by numpy.savez\), found a file starting with b.this"):
        load_segmentation_npz(path)


# ------------------------------------------------------------------------------------------ folder source
def test_png_folder_orientation_values_and_255_masks(tmp_path):
    root = tmp_path / "tiny"
    image = np.zeros((12, 16, 3), np.uint8)  # H=12, W=16: asymmetric so a transpose shows
    image[0, :, 0] = 255  # top row red
    image[:, 0, 1] = 200  # left column green
    mask = np.zeros((12, 16), np.uint8)
    mask[2:4, 10:15] = 255
    image[..., 2] = mask  # blue channel = mask, to check alignment after augmentation
    for split in ("train", "val", "test"):
        _png(root / split / "images" / "a.png", image)
        _png(root / split / "masks" / "a.png", mask)
    dm = SegmentationDataModule(root=str(root), batch_size=1)
    assert dm.name == "tiny"
    dm.setup()
    item = dm.dataset("val")[0]
    assert item["image"].dtype == torch.uint8
    assert torch.equal(item["image"], torch.from_numpy(image).permute(2, 0, 1))
    assert torch.equal(item["target"], torch.from_numpy(mask // 255).long())
    # non-square: training augmentation must keep the shape (no 90-degree rotation)
    for _ in range(6):
        train = dm.dataset("train")[0]
        assert train["image"].shape == (3, 12, 16) and train["target"].shape == (12, 16)
        assert torch.equal(train["image"][2], (train["target"] * 255).to(torch.uint8))


def test_png_folder_splits_and_batches(png_folder):
    root = png_folder(counts=(3, 2, 1))
    data = load_segmentation_folder(root)
    assert [data[s]["ids"] for s in ("train", "val", "test")] == [["case0", "case1", "case2"], ["case0", "case1"], ["case0"]]
    dm = SegmentationDataModule(root=str(root), batch_size=2)
    dm.setup()
    batch = next(iter(dm.loader("val")))["polyps"]
    assert batch["image"].shape == (2, 3, 12, 16) and batch["target"].shape == (2, 12, 16)
    assert batch["image"].dtype == torch.uint8
    assert set(batch["target"].unique().tolist()) <= {0, 1}


def test_grayscale_png_needs_in_channels_1(png_folder):
    root = png_folder(gray=True)
    dm = SegmentationDataModule(root=str(root), in_channels=1)
    dm.setup()
    assert dm.dataset("test")[0]["image"].shape == (1, 12, 16)
    dm = SegmentationDataModule(root=str(root), in_channels=3)
    with pytest.raises(ValueError, match=r"case0.png: field 'image' expected 3 channel\(s\) \(in_channels=3\), found 1 channel\(s\)"):
        dm.setup()


def test_nifti_2d_min_max_scaled(tmp_path):
    root = tmp_path / "ct"
    image = np.arange(20, dtype=np.float32).reshape(4, 5) * 10 - 100
    mask = np.zeros((4, 5), np.float32)
    mask[1:3, 2:4] = 2
    for split in ("train", "val", "test"):
        _nii(root / split / "images" / "p1.nii.gz", image)
        _nii(root / split / "masks" / "p1.nii", mask)
    dm = SegmentationDataModule(root=str(root), in_channels=1, label_names=["liver", "tumour"])
    dm.setup()
    item = dm.dataset("test")[0]
    assert torch.allclose(item["image"][0], torch.from_numpy((image + 100) / 190))
    assert torch.equal(item["target"], torch.from_numpy(mask).long())


def test_nifti_3d_volumes(tmp_path):
    root = tmp_path / "vols"
    rng = np.random.default_rng(0)
    stored = {}
    for split in ("train", "val", "test"):
        volume, mask = rng.random((6, 7, 5)).astype(np.float32), (rng.random((6, 7, 5)) > 0.5).astype(np.uint8)
        _nii(root / split / "images" / "v.nii.gz", volume)
        _nii(root / split / "masks" / "v.nii.gz", mask)
        stored[split] = volume, mask
    dm = SegmentationDataModule(root=str(root), in_channels=1, spatial_dims=3)
    assert dm.task_spec.depth_axis == "axial"
    dm.setup()
    for split in ("val", "test"):  # (X, Y, Z) files served (C, Z, Y, X): the tower slices along the superior axis
        item = dm.dataset(split)[0]
        assert item["image"].shape == (1, 5, 7, 6) and item["target"].shape == (5, 7, 6)
        volume, mask = stored[split]
        expected = (volume - volume.min()) / (volume.max() - volume.min())
        np.testing.assert_allclose(item["image"][0].numpy(), expected.transpose(2, 1, 0), atol=1e-6)
        np.testing.assert_array_equal(item["target"].numpy(), mask.transpose(2, 1, 0))
    dm2d = SegmentationDataModule(root=str(root), in_channels=1, spatial_dims=2)
    with pytest.raises(ValueError, match=r"v.nii.gz: field 'image': the task is 2D-only \(spatial_dims=2\) but the file holds a volume of shape \(6, 7, 5\)"):
        dm2d.setup()


def test_png_for_a_3d_task_named(png_folder):
    dm = SegmentationDataModule(root=str(png_folder()), spatial_dims=3)
    with pytest.raises(ValueError, match=r"case0.png: field 'image': the task is 3D \(spatial_dims=3\) but the file holds a 2D image of shape \(12, 16\)"):
        dm.setup()


def _break_folder(root, case):
    masks = root / "train" / "masks"
    if case == "no mask":
        (masks / "case1.png").unlink()
    elif case == "no image":
        _png(masks / "extra.png", np.zeros((12, 16), np.uint8))
    elif case == "mask values":
        bad = np.zeros((12, 16), np.uint8)
        bad[0, :3] = (1, 7, 255)
        _png(masks / "case1.png", bad)
    elif case == "multi-label values":  # 0/255 is only accepted for one-label tasks: rewrite case0 too
        _png(masks / "case0.png", np.ones((12, 16), np.uint8))
        bad = np.zeros((12, 16), np.uint8)
        bad[0, :2] = (2, 9)
        _png(masks / "case1.png", bad)
    elif case == "mask shape":
        _png(masks / "case1.png", np.zeros((16, 12), np.uint8))
    elif case == "rgb mask":
        _png(masks / "case1.png", np.zeros((12, 16, 3), np.uint8))
    elif case == "extension":
        (root / "val" / "images" / "notes.txt").write_text("x")
    elif case == "missing split":
        for path in (root / "test" / "masks").iterdir():
            path.unlink()
        (root / "test" / "masks").rmdir()
    elif case == "empty split":
        for sub in ("images", "masks"):
            for path in (root / "val" / sub).iterdir():
                path.unlink()


@pytest.mark.parametrize(
    "case, kwargs, message",
    [
        ("no mask", {}, r"train/images/case1.png: field 'image' has no matching mask; expected .*train/masks/case1.<ext>"),
        ("no image", {}, r"train/masks/extra.png: field 'mask' has no matching image"),
        ("mask values", {}, r"case1.png: field 'mask' expected binary values \{0,1\} \(or \{0,255\}\) for a task with one label, found values \[0, 1, 7, 255\]"),
        ("multi-label values", {"label_names": ["a", "b"]}, r"case1.png: field 'mask' expected label values in \[0, 2\] .*found values \[0, 2, 9\]"),
        ("mask shape", {}, r"masks/case1.png: field 'mask' expected the spatial shape of its image .*images/case1.png \(12, 16\), found \(16, 12\)"),
        ("rgb mask", {}, r"masks/case1.png: field 'mask' expected a single-channel mask, found 3 channels"),
        ("extension", {}, r"notes.txt: unsupported file extension, expected one of \['.nii.gz', '.nii', '.dcm', '.png', '.jpg', '.jpeg'\], found 'notes.txt'"),
        ("missing split", {}, r"test/masks: folder not found"),
        ("empty split", {}, r"val/images: split 'val' expected at least one image, found none"),
    ],
)
def test_bad_folder_named(png_folder, case, kwargs, message):
    root = png_folder()
    _break_folder(root, case)
    dm = SegmentationDataModule(root=str(root), **kwargs)
    with pytest.raises(ValueError, match=message):
        dm.setup()


def test_missing_root_named(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"root not found: .*nothing_here"):
        SegmentationDataModule(root=str(tmp_path / "nothing_here")).setup()


# ------------------------------------------------------------------------------------------ arguments
@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"file": "a.npz", "root": "data"}, r"expected exactly one of file .* or root .*, found both"),
        ({}, r"expected exactly one of file .* or root .*, found neither"),
        ({"file": "a.csv"}, r"file expected a path ending in .npz, found 'a.csv'"),
        ({"file": "a.npz", "train_subset": 0}, r"train_subset expected None or a positive integer, found 0"),
        ({"file": "a.npz", "val_subset": True}, r"val_subset expected None or a positive integer, found True"),
        ({"file": "a.npz", "test_subset": "5"}, r"test_subset expected None or a positive integer, found '5'"),
        ({"file": "a.npz", "subset_seed": 1.5}, r"subset_seed expected an integer, found 1.5"),
        ({"file": "a.npz", "label_names": []}, r"label_names expected a non-empty list of non-empty strings, found \[\]"),
        ({"file": "a.npz", "label_names": "polyp"}, r"label_names expected a non-empty list .*found 'polyp'"),
        ({"file": "a.npz", "label_names": ["a", "a"]}, r"label_names expected unique names, found \['a', 'a'\]"),
        ({"file": "a.npz", "in_channels": 0}, r"in_channels expected a positive integer, found 0"),
        ({"file": "a.npz", "spatial_dims": 1}, r"spatial_dims expected 2 or 3, found 1"),
        ({"file": "a.npz", "augment": "yes"}, r"augment expected true or false, found 'yes'"),
        ({"file": "a.npz", "modality": ""}, r"modality expected a non-empty string, found ''"),
        ({"file": "a.npz", "task_name": "1st"}, r"task_name expected None or an identifier .*found '1st'"),
        ({"file": "a.npz", "batch_size": 0}, r"batch_size expected a positive integer, found 0"),
    ],
)
def test_argument_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SegmentationDataModule(**kwargs)


def test_dataset_rejects_unknown_split_and_count_mismatch(seg_npz):
    dm = SegmentationDataModule(file=str(seg_npz()))
    dm.setup()
    with pytest.raises(ValueError, match=r"split expected one of \['train', 'val', 'test'\], found 'dev'"):
        dm.dataset("dev")
    with pytest.raises(ValueError, match="2 images but 1 masks"):
        SegmentationDataset([np.zeros((1, 4, 4), np.uint8)] * 2, [np.zeros((4, 4), np.uint8)])


# ------------------------------------------------------------------------------------------ uint8 contract
def test_uint8_items_are_copies(seg_npz):
    dm = SegmentationDataModule(file=str(seg_npz()), augment=False)
    dm.setup()
    item = dm.dataset("val")[0]
    expected = item["image"].clone()
    item["image"].zero_()
    assert torch.equal(dm.dataset("val")[0]["image"], expected)


def test_dataset_serves_float_unless_asked_for_uint8():
    images, masks = [np.full((1, 4, 4), 51, np.uint8)], [np.zeros((4, 4), np.uint8)]
    as_float = SegmentationDataset(images, masks)[0]["image"]  # the default kept for callers expecting float
    assert as_float.dtype == torch.float32 and torch.allclose(as_float, torch.full((1, 4, 4), 0.2))
    as_uint8 = SegmentationDataset(images, masks, serve_uint8=True)[0]["image"]
    assert as_uint8.dtype == torch.uint8 and torch.equal(as_uint8, torch.full((1, 4, 4), 51, dtype=torch.uint8))


def test_folder_with_any_non_8bit_image_is_float_throughout(tmp_path):
    root = tmp_path / "mixed"
    eight = np.full((4, 5), 51, np.uint8)
    sixteen = np.full((4, 5), 13107, np.uint16)  # 0.2 * 65535
    mask = np.zeros((4, 5), np.uint8)
    for split in ("train", "val", "test"):
        _png(root / split / "images" / "a.png", eight)
        _png(root / split / "masks" / "a.png", mask)
    _png(root / "train" / "images" / "b.png", sixteen)
    _png(root / "train" / "masks" / "b.png", mask)
    dm = SegmentationDataModule(root=str(root), in_channels=1, batch_size=2)
    dm.setup()
    for split in ("train", "val", "test"):
        for item in dm.dataset(split):
            assert item["image"].dtype == torch.float32 and torch.allclose(item["image"], torch.full((1, 4, 5), 0.2))
    assert next(iter(dm.loader("train")))["mixed"]["image"].dtype == torch.float32


def test_a_test_only_set_from_another_centre_works_as_a_cross_domain_without_code(seg_npz):
    from data_modules import DomainStream

    trained = SegmentationDataModule(file=str(seg_npz("centre_a.npz")), task_name="polyps")
    other = SegmentationDataModule(file=str(seg_npz("centre_b.npz", split=np.full(10, 2, np.uint8))), task_name="polyps_b")
    stream = DomainStream(domains=[trained], cross_domains={"polyps": [other]})
    stream.setup("fit")
    batch = next(iter(stream.domain("polyps_b").loader("test")))
    assert batch["polyps_b"]["image"].shape[0] == 10
    with pytest.raises(ValueError, match=r"domains domain 'polyps_b' has no train/val samples; .*needs train, val, test samples"):
        DomainStream(domains=[SegmentationDataModule(file=str(seg_npz("centre_b2.npz", split=np.full(10, 2, np.uint8))), task_name="polyps_b")]).setup("fit")
