"""SemiSyntheticPETCTDataModule: SEMI-SYNTHETIC lesions on real OrganAMNIST CT slices, optional synthetic PET."""
import numpy as np
import pytest
import torch

from conftest import SHARED_MEDMNIST
from data_modules import SemiSyntheticPETCTDataModule

ORGAN = SHARED_MEDMNIST / "organamnist.npz"
pytestmark = pytest.mark.skipif(not ORGAN.is_file(), reason="../shared/data/medmnist/organamnist.npz not present")

SMALL = dict(data_dir=str(SHARED_MEDMNIST), train_subset=64, val_subset=16, test_subset=16, augment=False)


def _module(**kwargs):
    dm = SemiSyntheticPETCTDataModule(**{**SMALL, **kwargs})
    dm.setup()
    return dm


def _arrays(dm, split="train"):
    ds = dm.dataset(split)
    return ds.images, ds.masks


@pytest.fixture(scope="module")
def both():
    return _module(channels=["ct", "pet"])


@pytest.mark.parametrize(
    "channels, name, modality",
    [(["ct"], "ct_lesion_semisynthetic", "ct"), (["ct", "pet"], "ct_pet_lesion_semisynthetic", "pet_ct")],
)
def test_batches_and_spec(channels, name, modality):
    dm = _module(channels=channels, augment=True, batch_size=8)
    spec = dm.task_spec
    assert (spec.name, spec.kind, spec.modality) == (name, "segmentation", modality)
    assert spec.in_channels == len(channels) and spec.spatial_dims == 2 and spec.label_names == ("lesion",)
    batch = next(iter(dm.loader("train")))
    assert list(batch) == [name]
    image, target = batch[name]["image"], batch[name]["target"]
    assert image.shape == (8, len(channels), 28, 28) and image.dtype == torch.uint8  # 0..255, as generated
    assert target.shape == (8, 28, 28) and target.dtype == torch.long
    assert set(target.unique().tolist()) == {0, 1}
    assert [len(dm.dataset(s)) for s in ("train", "val", "test")] == [64, 16, 16]
    assert dm.description.startswith("SEMI-SYNTHETIC")


def test_ct_and_masks_do_not_depend_on_channels(both):
    ct_only = _module(channels=["ct"])
    pet_first = _module(channels=["pet", "ct"])
    for split in ("train", "val", "test"):
        (a, ma), (b, mb), (c, mc) = _arrays(ct_only, split), _arrays(both, split), _arrays(pet_first, split)
        assert np.array_equal(a[:, 0], b[:, 0]) and np.array_equal(a[:, 0], c[:, 1])
        assert np.array_equal(ma, mb) and np.array_equal(ma, mc)
        assert np.array_equal(b[:, 1], c[:, 0])


def test_determinism_and_seed(both):
    again = _module(channels=["ct", "pet"])
    for split in ("train", "val", "test"):
        for x, y in zip(_arrays(both, split), _arrays(again, split)):
            assert np.array_equal(x, y)
    other = _module(channels=["ct", "pet"], seed=1)
    assert not np.array_equal(_arrays(both)[1], _arrays(other)[1])


def test_samples_do_not_depend_on_the_subset(both):
    """Each sample is generated from (seed, split, official index) alone."""
    with np.load(ORGAN) as archive:
        real = archive["val_images"]
    images, masks = _arrays(both, "val")
    for k, i in enumerate(both.source_indices("val")):
        image, mask = both.generate(real[i], "val", int(i))
        assert np.array_equal(image, images[k]) and np.array_equal(mask, masks[k])
    image, mask = both.generate(real[0], "val", 0)
    assert not np.array_equal(image, both.generate(real[0], "val", 1)[0])


def test_masks_and_pet_signal(both):
    images, masks = _arrays(both)
    assert set(np.unique(masks).tolist()) == {0, 1}
    assert (masks.reshape(len(masks), -1).sum(1) >= 1).all()
    pet, inside = images[:, 1] / 255.0, masks.astype(bool)
    assert pet[inside].mean() - pet[~inside].mean() > 0.2


def test_ct_lesion_contrast_is_small():
    with np.load(ORGAN) as archive:
        real = archive["train_images"]
    clean = _module(channels=["ct"], ct_contrast=0.0, ct_noise=0.0)
    index = clean.source_indices("train")
    images, _ = _arrays(clean)
    assert np.array_equal(images[:, 0], real[index])  # CT channel is the real slice
    lesion = _module(channels=["ct"], ct_contrast=0.08, ct_noise=0.0)
    images, masks = _arrays(lesion)
    delta = np.abs(images[:, 0].astype(float) - real[index].astype(float)) / 255.0
    inside = masks.astype(bool)
    assert np.all(delta[~inside] == 0)
    assert 0.04 < delta[inside].mean() <= 0.08 + 1e-9  # ~ct_contrast (less where clipped at 0 or 1)


def test_decoy_changes_pet_outside_mask_only():
    kw = dict(channels=["ct", "pet"], pet_noise=0.0)
    none, always = _module(decoy_probability=0.0, **kw), _module(decoy_probability=1.0, **kw)
    (a, ma), (b, mb) = _arrays(none), _arrays(always)
    assert np.array_equal(ma, mb) and np.array_equal(a[:, 0], b[:, 0])
    outside = ~ma.astype(bool)
    diff = np.abs(a[:, 1].astype(int) - b[:, 1].astype(int))
    assert diff[outside].max() > 100  # a decoy with lesion-like uptake appears
    assert (diff.reshape(len(diff), -1).max(1) > 100).mean() > 0.9  # in (nearly) every image


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(channels=["mri"]), "channels"),
        (dict(channels=["pet"]), "channels"),
        (dict(channels=["ct", "ct"]), "channels"),
        (dict(channels=[]), "channels"),
        (dict(decoy_probability=1.5), "decoy_probability"),
        (dict(lesion_radius=(3, 2)), "lesion_radius"),
        (dict(lesion_radius=(0, 2)), "lesion_radius"),
        (dict(ct_noise=-0.1), "ct_noise"),
        (dict(seed=-1), "seed"),
        (dict(task_name="1bad"), "task_name"),
        (dict(train_subset=0), "train_subset"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SemiSyntheticPETCTDataModule(**{**SMALL, **kwargs})


def test_missing_file(tmp_path):
    dm = SemiSyntheticPETCTDataModule(data_dir=str(tmp_path / "nowhere"), train_subset=4)
    with pytest.raises(FileNotFoundError, match="nowhere.*organamnist.npz.*medmnist"):
        dm.setup()


@pytest.mark.parametrize("flag", ["bloodmnist", "vesselmnist3d"])
def test_rgb_or_3d_flag(flag):
    if not (SHARED_MEDMNIST / f"{flag}.npz").is_file():
        pytest.skip("shared data not present")
    dm = SemiSyntheticPETCTDataModule(flag=flag, data_dir=str(SHARED_MEDMNIST), train_subset=4)
    with pytest.raises(ValueError, match=r"'train_images' expected \(N, H, W\) grayscale.*found shape"):
        dm.setup()


def test_setup_is_idempotent_and_dataset_needs_setup():
    dm = SemiSyntheticPETCTDataModule(**SMALL)
    with pytest.raises(RuntimeError, match="setup"):
        dm.dataset("train")
    dm.setup()
    first = dm.dataset("train")
    dm.setup()
    assert dm.dataset("train") is first
    with pytest.raises(ValueError, match="split"):
        dm.dataset("dev")
