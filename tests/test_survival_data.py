"""Survival data modules: the semi-synthetic OrganAMNIST domain and user images + survival tables."""
import logging

import nibabel as nib
import numpy as np
import pytest
import torch
from lifelines.utils import concordance_index
from PIL import Image

from conftest import DEMO_DIR, write_npz
from data_modules.medmnist import MedMNISTDataModule
from data_modules.survival import SemiSyntheticSurvivalDataModule, SurvivalDataModule, harrell_c_index

SPLITS = ("train", "val", "test")


# ---------------------------------------------------------------------------------------------- semi-synthetic
@pytest.fixture(scope="module")
def semi():
    dm = SemiSyntheticSurvivalDataModule(data_dir=str(DEMO_DIR), batch_size=16)
    spec_before_setup = dm.task_spec
    dm.setup()
    return dm, spec_before_setup


def _ranks(values):
    return np.argsort(np.argsort(values)).astype(float)


def test_semisynthetic_spec_is_known_before_setup_and_labelled():
    dm = SemiSyntheticSurvivalDataModule(data_dir=str(DEMO_DIR))
    spec = dm.task_spec
    assert not dm._datasets  # no images loaded yet
    assert spec.kind == "prognosis" and spec.modality == "ct" and spec.in_channels == 1 and spec.spatial_dims == 2
    assert "semisynthetic" in spec.name
    assert dm.description.startswith("SEMI-SYNTHETIC") and "OrganAMNIST" in dm.description
    assert "SEMI-SYNTHETIC" in SemiSyntheticSurvivalDataModule.__doc__
    bins = np.asarray(spec.time_bins)
    assert len(bins) >= 2 and np.all(np.diff(bins) > 0)
    assert bins[-1] == pytest.approx(dm.survival("train")[0].max())


def test_semisynthetic_items(semi):
    dm, spec = semi
    assert dm.task_spec == spec
    batch = next(iter(dm.loader("train")))[spec.name]
    image, target = batch["image"], batch["target"]
    assert image.shape == (16, 1, 28, 28) and image.dtype == torch.uint8  # MedMNIST uint8, the backbone divides by 255
    assert target.shape == (16, 2) and target.dtype == torch.float32
    for split in SPLITS:
        targets = dm.dataset(split).targets
        time, event = targets[:, 0], targets[:, 1]
        assert len(targets) == {"train": 2000, "val": 300, "test": 600}[split]
        assert (time > 0).all() and (time <= dm.max_follow_up).all()
        assert set(event.unique().tolist()) == {0.0, 1.0}
        assert 0.05 < 1.0 - event.mean().item() < 0.95  # censoring rate


def test_semisynthetic_seed_controls_the_simulation():
    def times(seed):
        return SemiSyntheticSurvivalDataModule(data_dir=str(DEMO_DIR), simulation_seed=seed).survival("train")[0]

    assert np.array_equal(times(0), times(0))
    assert not np.array_equal(times(0), times(1))


def test_subsets_keep_each_images_simulated_survival(semi):
    full, _ = semi
    sub = SemiSyntheticSurvivalDataModule(data_dir=str(DEMO_DIR), train_subset=100, val_subset=40, test_subset=40, subset_seed=3)
    sub.setup()
    for split in SPLITS:
        index = sub.source_indices(split)
        for got, want in zip(sub.survival(split), full.survival(split)):
            assert np.array_equal(got, want[index])
        assert torch.equal(sub.dataset(split).targets, full.dataset(split).targets[index])
    k = 7
    assert torch.equal(sub.dataset("train")[k]["image"], full.dataset("train")[int(sub.source_indices("train")[k])]["image"])
    # the same images as the classification module draws with the same subset seed
    cls = MedMNISTDataModule("organamnist", data_dir=str(DEMO_DIR), train_subset=100, val_subset=40, test_subset=40, subset_seed=3)
    cls.setup()
    assert np.array_equal(cls.dataset("train").targets.numpy(), sub.labels("train"))


@pytest.mark.parametrize("reverse", [False, True])
def test_higher_log_hazard_means_shorter_times(reverse):
    hazard = np.linspace(-1.5, 1.5, 11)[::-1] if reverse else None
    dm = SemiSyntheticSurvivalDataModule(data_dir=str(DEMO_DIR), log_hazard=hazard)
    time, _ = dm.survival("train")
    risk, labels = dm.true_log_hazard("train"), dm.labels("train")
    classes = np.unique(labels)
    medians = np.array([np.median(time[labels == c]) for c in classes])
    class_risk = dm.log_hazard[classes]
    assert np.corrcoef(_ranks(class_risk), _ranks(medians))[0, 1] < -0.8
    assert np.corrcoef(risk, np.log(time))[0, 1] < 0


def test_oracle_c_index_matches_lifelines(semi):
    dm, _ = semi
    for split in SPLITS:
        scores = dm.reference_scores(split)
        assert set(scores) == {"oracle_c_index"}
        c = scores["oracle_c_index"]
        assert 0.6 < c < 1.0
        time, event = dm.survival(split)
        assert c == pytest.approx(concordance_index(time, -dm.true_log_hazard(split), event), abs=1e-6)


def test_harrell_c_index_conventions():
    time = np.array([1.0, 2.0, 3.0, 4.0])
    event = np.array([1, 1, 0, 1])
    assert harrell_c_index(np.array([4.0, 3.0, 2.0, 1.0]), time, event) == pytest.approx(1.0)
    assert harrell_c_index(np.array([1.0, 2.0, 3.0, 4.0]), time, event) == pytest.approx(0.0)
    assert harrell_c_index(np.zeros(4), time, event) == pytest.approx(0.5)  # ties count 1/2
    assert np.isnan(harrell_c_index(np.zeros(4), time, np.zeros(4)))


def test_only_administrative_censoring_without_censoring_hazard():
    dm = SemiSyntheticSurvivalDataModule(data_dir=str(DEMO_DIR), censoring_hazard=0.0, max_follow_up=24.0)
    time, event = dm.survival("val")
    assert np.all(time[event == 0] == 24.0) and np.all(time[event == 1] <= 24.0)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(log_hazard=[0.0, 1.0]), r"log_hazard expected 11 finite numbers"),
        (dict(log_hazard=[float("nan")] * 11), r"log_hazard expected 11 finite numbers"),
        (dict(flag="chestmnist"), r"flag expected a 2D single-label MedMNIST flag .* found 'chestmnist'"),
        (dict(flag="organmnist3d"), r"found 'organmnist3d'"),
        (dict(baseline_hazard=0), r"baseline_hazard expected a finite number > 0, found 0"),
        (dict(censoring_hazard=-1.0), r"censoring_hazard expected a finite number >= 0, found -1.0"),
        (dict(max_follow_up=float("inf")), r"max_follow_up expected a finite number > 0, found inf"),
        (dict(train_subset=0), r"train_subset expected None or a positive integer, found 0"),
        (dict(num_time_bins=1), r"num_time_bins expected an integer >= 2, found 1"),
        (dict(task_name="1bad"), r"TaskSpec '1bad': field 'name'"),
    ],
)
def test_semisynthetic_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SemiSyntheticSurvivalDataModule(data_dir=str(DEMO_DIR), **kwargs)


def test_semisynthetic_subset_larger_than_split():
    dm = SemiSyntheticSurvivalDataModule(data_dir=str(DEMO_DIR), val_subset=5000)
    with pytest.raises(ValueError, match=r"val_subset=5000 is larger than the 300 'val_images' in .*organamnist.npz"):
        dm.task_spec


def test_semisynthetic_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.npz"):
        SemiSyntheticSurvivalDataModule(file="nowhere.npz").task_spec


# ---------------------------------------------------------------------------------------------- user data
IDS = [f"p{i}" for i in range(10)]
SPLIT_OF = ["train"] * 6 + ["val"] * 2 + ["test"] * 2


def _picture(i, size=(6, 8), channels=1):
    """An asymmetric uint8 picture (H, W[, 3]) unique to ``i``."""
    h, w = size
    array = (np.arange(h * w).reshape(h, w) * 3 + 17 * i).astype(np.uint8)
    return np.repeat(array[..., None], 3, axis=2) if channels == 3 else array


def _rows(split=True):
    head = "id,time,event,split" if split else "id,time,event"
    body = [f"{pid},{1.5 * (i + 1)},{i % 2}" + (f",{SPLIT_OF[i]}" if split else "") for i, pid in enumerate(IDS)]
    return [head] + body


def _folder(tmp_path, lines=None, pictures=None, size=(6, 8)):
    """Write PNGs for IDS (or ``pictures``: name -> array) and a CSV; returns (folder, csv)."""
    folder = tmp_path / "images"
    folder.mkdir(exist_ok=True)
    pictures = pictures if pictures is not None else {f"{pid}.png": _picture(i, size) for i, pid in enumerate(IDS)}
    for name, array in pictures.items():
        if name.endswith((".nii", ".nii.gz")):
            nib.save(nib.Nifti1Image(array, np.eye(4)), str(folder / name))
        else:
            Image.fromarray(array).save(folder / name)
    table = tmp_path / "survival.csv"
    table.write_text("\n".join(lines if lines is not None else _rows()) + "\n")
    return folder, table


def _npz(tmp_path, name="surv.npz", n=10, **overrides):
    arrays = {
        "images": np.stack([_picture(i) for i in range(n)]),
        "time": np.linspace(1.0, 10.0, n),
        "event": (np.arange(n) % 2).astype(np.int64),
        "split": np.array([0] * 6 + [1] * 2 + [2] * 2)[:n],
    }
    return write_npz(tmp_path / name, arrays, **overrides)


def test_png_folder_with_split_column(tmp_path, caplog):
    folder, table = _folder(tmp_path)
    Image.fromarray(_picture(99)).save(folder / "stranger.png")  # no CSV row: ignored with a warning
    (folder / "notes.txt").write_text("not an image")
    dm = SurvivalDataModule(str(folder), table=str(table), task_name="toy_prognosis", modality="ct", batch_size=4)
    spec = dm.task_spec
    assert not dm._datasets
    assert spec.kind == "prognosis" and spec.name == "toy_prognosis" and spec.modality == "ct"
    assert np.all(np.diff(spec.time_bins) > 0) and spec.time_bins[-1] == pytest.approx(9.0)
    with caplog.at_level(logging.WARNING, logger="data_modules.survival"):
        dm2 = SurvivalDataModule(str(folder), table=str(table))
        dm2.task_spec
    assert "stranger.png" in caplog.text
    dm.setup()
    assert dm.ids("train") == IDS[:6] and dm.ids("val") == IDS[6:8] and dm.ids("test") == IDS[8:]
    item = dm.dataset("val")[1]  # p7
    assert item["image"].shape == (1, 6, 8) and item["image"].dtype == torch.uint8  # 8-bit PNGs stay uint8
    assert torch.equal(item["image"][0], torch.from_numpy(_picture(7)))  # (H, W) as in the picture
    assert item["target"].tolist() == [12.0, 1.0]
    batch = next(iter(dm.loader("test")))["toy_prognosis"]
    assert batch["image"].shape == (2, 1, 6, 8) and batch["target"].shape == (2, 2)
    assert batch["image"].dtype == torch.uint8


def test_rgb_pngs(tmp_path):
    folder, table = _folder(tmp_path, pictures={f"{pid}.png": _picture(i, channels=3) for i, pid in enumerate(IDS)})
    dm = SurvivalDataModule(str(folder), table=str(table), in_channels=3)
    dm.setup()
    image = dm.dataset("train")[2]["image"]
    assert image.shape == (3, 6, 8) and torch.equal(image[1], torch.from_numpy(_picture(2)))


def test_folder_with_any_non_8bit_file_is_float_throughout(tmp_path):
    """One dtype per task: a 16-bit file makes every image float32 in [0, 1] (8-bit ones / 255)."""
    pictures = {f"{pid}.png": _picture(i) for i, pid in enumerate(IDS)}
    pictures[f"{IDS[0]}.png"] = _picture(0).astype(np.uint16) * 257  # the same picture in 16 bits
    folder, table = _folder(tmp_path, pictures=pictures)
    dm = SurvivalDataModule(str(folder), table=str(table), batch_size=2)
    dm.setup()
    for split in SPLITS:
        assert all(item["image"].dtype == torch.float32 for item in dm.dataset(split))
    expected = torch.from_numpy(_picture(0)).float() / 255
    assert torch.allclose(dm.dataset("train")[0]["image"][0], expected)
    assert torch.equal(dm.dataset("val")[1]["image"][0], torch.from_numpy(_picture(7)).float() / 255)


def test_random_split_is_seeded(tmp_path):
    rows = ["id,time,event"] + [f"q{i},{i + 1},{i % 2}" for i in range(20)]
    folder, table = _folder(tmp_path, lines=rows, pictures={f"q{i}.png": _picture(i) for i in range(20)})

    def split_ids(seed):
        dm = SurvivalDataModule(str(folder), table=str(table), split_seed=seed, val_fraction=0.2, test_fraction=0.25)
        return {split: dm.ids(split) for split in SPLITS}

    first = split_ids(0)
    assert {k: len(v) for k, v in first.items()} == {"train": 11, "val": 4, "test": 5}
    assert sorted(sum(first.values(), [])) == sorted(f"q{i}" for i in range(20))
    assert split_ids(0) == first and split_ids(1) != first


def test_nifti_volumes_are_min_max_scaled(tmp_path):
    rng = np.random.default_rng(0)
    pictures = {f"{pid}.nii.gz": (rng.normal(size=(4, 5, 3)) * 100).astype(np.float32) for pid in IDS}
    folder, table = _folder(tmp_path, pictures=pictures)
    dm = SurvivalDataModule(str(folder), table=str(table), spatial_dims=3)
    dm.setup()
    image = dm.dataset("train")[0]["image"]
    assert image.dtype == torch.float32  # float NIfTI: float32 in [0, 1]
    assert image.shape == (1, 3, 5, 4) and image.min() == 0.0 and image.max() == 1.0  # (X, Y, Z) served (Z, Y, X): axial slices
    assert dm.task_spec.spatial_dims == 3 and dm.task_spec.depth_axis == "axial"


def test_npz_variant(tmp_path):
    dm = SurvivalDataModule(str(_npz(tmp_path)))
    dm.setup()
    assert [len(dm.dataset(s)) for s in SPLITS] == [6, 2, 2]
    assert dm.ids("val") == ["6", "7"]
    item = dm.dataset("test")[0]
    assert item["image"].shape == (1, 6, 8) and item["image"].dtype == torch.uint8
    assert torch.equal(item["image"][0], torch.from_numpy(_picture(8)))
    item["image"].zero_()  # items are copies: the stored data are untouched
    assert torch.equal(dm.dataset("test")[0]["image"][0], torch.from_numpy(_picture(8)))
    assert item["target"].tolist() == [9.0, 0.0]
    rgb = SurvivalDataModule(str(_npz(tmp_path, "rgb.npz", images=np.stack([_picture(i, channels=3) for i in range(10)]))), in_channels=3)
    rgb.setup()
    assert rgb.dataset("train")[0]["image"].shape == (3, 6, 8)
    n = 30
    no_split = _npz(tmp_path, "nosplit.npz", n=n, split=None, ids=np.array([f"s{i}" for i in range(n)]))
    a, b = (SurvivalDataModule(str(no_split), split_seed=s) for s in (0, 5))
    assert [len(a.ids(s)) for s in SPLITS] == [21, 3, 6]
    assert a.ids("test") == SurvivalDataModule(str(no_split), split_seed=0).ids("test") != b.ids("test")


# ------------------------------------------------------------------ bad inputs: file, field and found value named
def _replace(lines, index, text):
    return lines[:index] + [text] + lines[index + 1:]


BAD_TABLES = {
    "missing column": (["id,time,split", "p0,1,train"], ["missing column(s) ['event']", "found ['id', 'time', 'split']"]),
    "negative time": (_replace(_rows(), 3, "p2,-4,1,train"), ["'time'", "line 4", "'p2'", "'-4'"]),
    "infinite time": (_replace(_rows(), 3, "p2,inf,1,train"), ["'time'", "line 4", "'inf'"]),
    "nan time": (_replace(_rows(), 3, "p2,nan,1,train"), ["'time'", "'nan'"]),
    "text time": (_replace(_rows(), 3, "p2,soon,1,train"), ["'time'", "'soon'"]),
    "bad event": (_replace(_rows(), 2, "p1,3,2,train"), ["'event'", "line 3", "'2'"]),
    "text event": (_replace(_rows(), 2, "p1,3,yes,train"), ["'event'", "'yes'"]),
    "duplicate id": (_replace(_rows(), 2, "p0,3,1,train"), ["'id'", "duplicate 'p0'", "line 3"]),
    "bad split": (_replace(_rows(), 2, "p1,3,1,training"), ["'split'", "'training'"]),
    "empty split": ([r.replace(",test", ",val") for r in _rows()], ["'split'", "'test'", "found none"]),
}


def assert_one_line_error(action, file_name, expected):
    """``action`` raises a one-line ValueError naming ``file_name`` and containing every ``expected`` text."""
    with pytest.raises(ValueError) as err:
        action()
    message = str(err.value)
    assert file_name in message and "\n" not in message
    for text in expected:
        assert text in message, (text, message)


@pytest.mark.parametrize("case", sorted(BAD_TABLES))
def test_bad_table_is_named_precisely(tmp_path, case):
    lines, expected = BAD_TABLES[case]
    folder, table = _folder(tmp_path, lines=lines)
    assert_one_line_error(lambda: SurvivalDataModule(str(folder), table=str(table)).setup(), "survival.csv", expected)


@pytest.mark.parametrize(
    "case",
    ["missing image", "rgb for gray task", "3D volume for 2D task", "2D image for 3D task", "mixed sizes", "random split empty"],
)
def test_bad_images_are_named_precisely(tmp_path, case):
    pictures = {f"{pid}.png": _picture(i) for i, pid in enumerate(IDS)}
    lines, kwargs = _rows(), {}
    if case == "missing image":
        pictures.pop("p3.png")
        expected = ["survival.csv", "'id'", "'p3'", "images"]
    elif case == "rgb for gray task":
        pictures["p1.png"] = _picture(1, channels=3)
        expected = ["p1.png", "channels expected 1", "found 3"]
    elif case == "3D volume for 2D task":
        del pictures["p4.png"]
        pictures["p4.nii.gz"] = np.zeros((6, 8, 5), np.float32)
        expected = ["p4.nii.gz", "2D-only", "3D volume was found", "(6, 8, 5)"]
    elif case == "2D image for 3D task":
        kwargs = dict(spatial_dims=3)
        expected = ["p0.png", "spatial_dims=3", "2D image", "(6, 8)"]
    elif case == "mixed sizes":
        pictures["p2.png"] = _picture(2, size=(7, 8))
        expected = ["p2.png", "size expected (6, 8)", "p0.png", "found (7, 8)"]
    else:
        lines = _rows(split=False)[:4]
        expected = ["survival.csv", "split 'val'", "found 0", "3 rows"]
    folder, table = _folder(tmp_path, lines=lines, pictures=pictures)
    with pytest.raises(ValueError) as err:
        SurvivalDataModule(str(folder), table=str(table), **kwargs).setup()
    message = str(err.value)
    assert "\n" not in message
    for text in expected:
        assert text in message, (text, message)


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (dict(event=None), ["missing field(s) ['event']"]),
        (dict(time=np.array([1.0] * 9 + [-2.0])), ["'time'", "index 9", "-2.0"]),
        (dict(time=np.array([1.0] * 9 + [np.nan])), ["'time'", "index 9", "nan"]),
        (dict(event=np.array([0] * 9 + [3])), ["'event'", "index 9", "found 3"]),
        (dict(split=np.array([0] * 9 + [5])), ["'split'", "index 9", "found 5"]),
        (dict(ids=np.array(["a", "b"] * 5)), ["'ids'", "duplicate 'a'"]),
        (dict(time=np.ones(4)), ["'time'", "(10,)", "(4,)"]),
        (dict(images=np.zeros((10, 6, 8), np.float32)), ["'images'", "uint8", "float32"]),
        (dict(images=np.zeros((10, 6, 8, 3), np.uint8)), ["'images'", "expected 1 channel", "found 3"]),
        (dict(images=np.zeros((10, 5, 6, 8), np.uint8)), ["'images'", "3D volume", "2D-only", "(10, 5, 6, 8)"]),
        (dict(event=np.zeros(10, np.int64)), ["'event'", "at least one observed event"]),
    ],
)
def test_bad_npz_is_named_precisely(tmp_path, overrides, expected):
    path = _npz(tmp_path, **overrides)
    assert_one_line_error(lambda: SurvivalDataModule(str(path)).setup(), "surv.npz", expected)


@pytest.mark.parametrize(
    "kwargs, pattern",
    [
        (dict(images="folder"), r"table expected a CSV path .* found None"),
        (dict(images="x.npz", table="t.csv"), r"table expected None for an .npz .* found 't.csv'"),
        (dict(images="x.npz", val_fraction=0.0), r"val_fraction expected a number in \(0, 1\), found 0.0"),
        (dict(images="x.npz", val_fraction=0.5, test_fraction=0.5), r"val_fraction \+ test_fraction expected < 1"),
        (dict(images="x.npz", in_channels=0), r"field 'in_channels' expected a positive integer, found 0"),
        (dict(images="x.npz", spatial_dims=4), r"field 'spatial_dims' expected 2 or 3, found 4"),
        (dict(images="x.npz", num_time_bins=0), r"num_time_bins expected an integer >= 2, found 0"),
    ],
)
def test_survival_module_rejects_bad_arguments(kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        SurvivalDataModule(**kwargs)


def test_missing_paths_raise_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.npz"):
        SurvivalDataModule(str(tmp_path / "absent.npz")).task_spec
    with pytest.raises(FileNotFoundError, match="absent.csv"):
        SurvivalDataModule(str(tmp_path), table=str(tmp_path / "absent.csv")).task_spec
