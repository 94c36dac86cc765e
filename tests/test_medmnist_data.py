import numpy as np
import pytest
import torch

from conftest import DEMO_DIR, SHARED_MEDMNIST
from data_modules import DomainStream, MedMNISTDataModule
from data_modules.medmnist_info import MEDMNIST_INFO


@pytest.mark.parametrize("flag, channels, n_classes", [("bloodmnist", 3, 8), ("organamnist", 1, 11)])
def test_demo_files_load_with_official_label_names(flag, channels, n_classes):
    dm = MedMNISTDataModule(flag, data_dir=str(DEMO_DIR), batch_size=16)
    dm.setup("fit")
    spec = dm.task_spec
    assert spec.num_classes == n_classes and spec.in_channels == channels
    assert list(spec.class_names) == list(MEDMNIST_INFO[flag]["labels"])
    assert all(name in prompt for name, prompt in zip(spec.class_names, spec.prompts))
    batch = next(iter(dm.loader("train")))
    assert set(batch) == {flag}
    image, target = batch[flag]["image"], batch[flag]["target"]
    assert image.shape == (16, channels, 28, 28) and image.dtype == torch.uint8  # the backbone divides by 255
    assert int(image.max()) > 1
    assert target.shape == (16,) and target.dtype == torch.int64 and int(target.max()) < n_classes


def test_demo_files_are_a_subset_of_the_official_files():
    if not SHARED_MEDMNIST.is_dir():
        pytest.skip("../shared/data/medmnist not present")
    with np.load(DEMO_DIR / "bloodmnist.npz") as demo, np.load(SHARED_MEDMNIST / "bloodmnist.npz") as full:
        official = {img.tobytes() for img in full["test_images"]}
        assert all(img.tobytes() in official for img in demo["test_images"][:50])


def test_subset_is_seeded_and_sized():
    def labels(seed):
        dm = MedMNISTDataModule("organamnist", data_dir=str(DEMO_DIR), train_subset=100, subset_seed=seed)
        dm.setup()
        return dm.dataset("train").targets

    assert len(labels(0)) == 100
    assert torch.equal(labels(0), labels(0))
    assert not torch.equal(labels(0), labels(1))


def test_subset_larger_than_split_is_refused():
    dm = MedMNISTDataModule("bloodmnist", data_dir=str(DEMO_DIR), val_subset=10_000)
    with pytest.raises(ValueError, match=r"val_subset=10000 is larger than the 300 'val_images' in .*bloodmnist.npz"):
        dm.setup()


@pytest.mark.parametrize("flag", ["pneumoniamnist", "retinamnist", "bloodmnist", "organamnist"])
def test_shared_official_files_load(flag):
    if not (SHARED_MEDMNIST / f"{flag}.npz").is_file():
        pytest.skip("shared data not present")
    dm = MedMNISTDataModule(flag, data_dir=str(SHARED_MEDMNIST), train_subset=64, val_subset=32, test_subset=32)
    dm.setup()
    assert len(dm.dataset("train")) == 64 and len(dm.dataset("test")) == 32


@pytest.mark.parametrize("flag, n_train", [("adrenalmnist3d", 1188), ("vesselmnist3d", 1335)])
def test_3d_flags_load_as_volume_tasks(flag, n_train):
    if not (SHARED_MEDMNIST / f"{flag}.npz").is_file():
        pytest.skip("shared data not present")
    dm = MedMNISTDataModule(flag, data_dir=str(SHARED_MEDMNIST), val_subset=8, test_subset=8)
    assert dm.task_spec.spatial_dims == 3 and dm.task_spec.in_channels == 1
    dm.setup()
    assert len(dm.dataset("train")) == n_train
    item = dm.dataset("train")[0]
    assert item["image"].shape == (1, 28, 28, 28) and item["image"].dtype == torch.uint8
    assert item["image"].max() > 0
    batch = next(iter(dm.loader("test")))[flag]
    assert batch["image"].shape == (8, 1, 28, 28, 28) and batch["target"].shape == (8,)


def test_3d_file_under_a_2d_name_is_refused(tmp_path):
    if not (SHARED_MEDMNIST / "vesselmnist3d.npz").is_file():
        pytest.skip("shared data not present")
    with np.load(SHARED_MEDMNIST / "vesselmnist3d.npz") as vol:
        np.savez(tmp_path / "myvessels.npz", **{k: vol[k] for k in vol.files})
    dm = MedMNISTDataModule("myvessels", data_dir=str(tmp_path), class_names=["vessel", "aneurysm"])
    with pytest.raises(ValueError, match=r"myvessels.npz: field 'train_images' has shape \(1335, 28, 28, 28\), a stack of 3D volumes .*the task is 2D-only"):
        dm.setup()


def test_missing_keys_named(make_npz):
    path = make_npz("broken.npz", val_labels=None, test_images=None)
    dm = MedMNISTDataModule("broken", file=str(path), class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"broken.npz: missing key\(s\) \['val_labels', 'test_images'\]"):
        dm.setup()


def test_labels_out_of_range_named(make_npz):
    bad = np.array([[0], [1], [2], [7], [0], [1]], dtype=np.uint8)
    path = make_npz("range.npz", val_labels=bad)
    dm = MedMNISTDataModule("range", file=str(path), class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"range.npz: field 'val_labels' has labels outside \[0, 2\] \(3 classes\): found min 0, max 7"):
        dm.setup()


def test_mismatched_counts_named(make_npz):
    path = make_npz("count.npz", train_labels=np.zeros((11, 1), dtype=np.uint8))
    dm = MedMNISTDataModule("count", file=str(path), class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"count.npz: field 'train_labels' has 11 samples but 'train_images' has 12"):
        dm.setup()


def test_wrong_dtype_named(make_npz):
    path = make_npz("float.npz", test_images=np.zeros((6, 28, 28), dtype=np.float32))
    dm = MedMNISTDataModule("float", file=str(path), class_names=["a", "b", "c"])
    with pytest.raises(ValueError, match=r"float.npz: field 'test_images' expected dtype uint8, found float32"):
        dm.setup()


def test_channel_mismatch_with_flag_named(make_npz, tmp_path):
    make_npz("bloodmnist.npz", classes=8)  # grayscale file posing as (RGB) BloodMNIST
    dm = MedMNISTDataModule("bloodmnist", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match=r"bloodmnist.npz: field 'train_images' has 1 channel\(s\), but bloodmnist images have 3"):
        dm.setup()


def test_missing_file_named_with_hint(tmp_path):
    dm = MedMNISTDataModule("bloodmnist", data_dir=str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"bloodmnist.npz.*download: true"):
        dm.setup()


def test_unknown_flag_needs_class_names():
    with pytest.raises(ValueError, match="not an official MedMNIST flag"):
        MedMNISTDataModule("mymnist")


def test_own_file_with_own_names(make_npz):
    path = make_npz("mine.npz", rgb=True)
    dm = MedMNISTDataModule("mine", file=str(path), class_names=["x", "y", "z"], prompt_template="a scan of {}", modality="mri")
    dm.setup()
    assert dm.task_spec.prompts == ("a scan of x", "a scan of y", "a scan of z")
    assert dm.class_counts("train") == [4, 4, 4]


def test_duplicate_task_names_in_stream_are_named():
    a = MedMNISTDataModule("bloodmnist", data_dir=str(DEMO_DIR))
    b = MedMNISTDataModule("organamnist", data_dir=str(DEMO_DIR), task_name="bloodmnist")
    with pytest.raises(ValueError, match=r"task name 'bloodmnist' is used by field 'domains\[0\]' and field 'domains\[1\]'"):
        DomainStream([a, b])


def test_stream_renamed_duplicate_domain_is_fine():
    a = MedMNISTDataModule("bloodmnist", data_dir=str(DEMO_DIR))
    b = MedMNISTDataModule("bloodmnist", data_dir=str(DEMO_DIR), task_name="blood_centre2")
    stream = DomainStream([a, b])
    assert stream.task_names == ["bloodmnist", "blood_centre2"]


def test_stream_refuses_empty_and_foreign_items():
    with pytest.raises(ValueError, match="field 'domains' expected at least one"):
        DomainStream([])
    with pytest.raises(ValueError, match=r"field 'domains\[0\]' expected a data_modules.DomainDataModule"):
        DomainStream(["bloodmnist"])


def test_stream_serves_requested_tasks_keyed():
    stream = DomainStream([MedMNISTDataModule(f, data_dir=str(DEMO_DIR), batch_size=8) for f in ("bloodmnist", "organamnist")])
    stream.setup("fit")
    batch, _, _ = next(iter(stream.train_dataloader()))  # no trainer: every task at once
    assert set(batch) == {"bloodmnist", "organamnist"}
    assert batch["organamnist"]["image"].shape == (8, 1, 28, 28)
    evalb = next(iter(stream.eval_dataloader("organamnist", "test")))
    assert set(evalb) == {"organamnist"}
    with pytest.raises(KeyError, match="no task 'chest'"):
        stream.domain("chest")



@pytest.mark.parametrize("flag, rgb", [("organamnist", False), ("bloodmnist", True)])
def test_uint8_npz_is_served_as_uint8_copies(make_npz, flag, rgb):
    """uint8 sources stay uint8 (v means v / 255) up to the model; items are contiguous copies."""
    path = make_npz(f"{flag}.npz", classes=8, rgb=rgb)
    with np.load(path) as archive:
        images = archive["train_images"]
    dm = MedMNISTDataModule(flag, file=str(path), batch_size=4)
    dm.setup()
    item = dm.dataset("train")[2]
    expected = torch.from_numpy(images[2]).permute(2, 0, 1) if rgb else torch.from_numpy(images[2]).unsqueeze(0)
    assert item["image"].dtype == torch.uint8 and item["image"].is_contiguous()
    assert torch.equal(item["image"], expected)
    item["image"].zero_()  # a copy: the stored data are untouched
    assert torch.equal(dm.dataset("train")[2]["image"], expected)
    batch = next(iter(dm.loader("val")))[flag]
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape[1:] == (3 if rgb else 1, 28, 28)


@pytest.mark.parametrize("subset", [None, 50])
def test_memory_mapped_images_equal_the_loaded_ones(tmp_path, subset):
    """memory_map: the image arrays are copied out of the .npz once and served from a memory map, item for item equal."""
    from conftest import REPO

    kwargs = dict(flag="bloodmnist", data_dir=str(REPO / "data/demo/medmnist"), train_subset=subset, subset_seed=3)
    loaded = MedMNISTDataModule(**kwargs)
    mapped = MedMNISTDataModule(**kwargs, memory_map=True, cache_dir=str(tmp_path / "mmap"))
    loaded.setup("fit")
    mapped.setup("fit")
    assert isinstance(mapped.dataset("train").images, np.memmap)
    for split in ("train", "val", "test"):
        assert len(mapped.dataset(split)) == len(loaded.dataset(split))
        for i in (0, len(loaded.dataset(split)) - 1):
            a, b = loaded.dataset(split)[i], mapped.dataset(split)[i]
            assert torch.equal(a["image"], b["image"]) and a["image"].dtype == torch.uint8 and torch.equal(a["target"], b["target"])
    copies = sorted(p.name for p in (tmp_path / "mmap").rglob("*.npy"))
    assert copies == ["test_images.npy", "train_images.npy", "val_images.npy"]
    mtimes = [p.stat().st_mtime_ns for p in (tmp_path / "mmap").rglob("*.npy")]
    again = MedMNISTDataModule(**kwargs, memory_map=True, cache_dir=str(tmp_path / "mmap"))
    again.setup("fit")
    assert [p.stat().st_mtime_ns for p in (tmp_path / "mmap").rglob("*.npy")] == mtimes  # converted once
