"""data_modules.io: orientation, channels, scaling, NIfTI stored order, listing and error messages."""
import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from data_modules.io import (
    file_id,
    image_files_by_id,
    list_image_files,
    read_array,
    read_image,
    scale_intensities,
)

H, W = 6, 9  # non-square, so a transposition changes the shape


def _picture(channels):
    """An asymmetric uint8 picture (H, W[, C]) with a smooth gradient (survives JPEG)."""
    rows, cols = np.mgrid[0:H, 0:W]
    gray = (rows * 30 + cols * 5).astype(np.uint8)
    return gray if channels == 1 else np.stack([gray, 255 - gray, gray // 2], axis=-1)


def _nii(path, array):
    nib.save(nib.Nifti1Image(array, np.eye(4)), str(path))
    return path


@pytest.mark.parametrize("name, channels, tolerance", [("g.png", 1, 0), ("c.png", 3, 0), ("c.jpg", 3, 4)])
def test_pictures_are_channel_first_as_seen(tmp_path, name, channels, tolerance):
    picture = _picture(channels)
    Image.fromarray(picture).save(tmp_path / name, quality=100, subsampling=0)  # options ignored by PNG
    expected = picture[None] if channels == 1 else np.moveaxis(picture, -1, 0)
    raw = read_array(tmp_path / name)
    assert raw.shape == (channels, H, W) and raw.dtype == np.uint8 and raw.flags.writeable
    assert np.abs(raw.astype(int) - expected.astype(int)).max() <= tolerance
    image = read_image(tmp_path / name)
    assert image.dtype == np.float32 and image.shape == (channels, H, W)
    np.testing.assert_allclose(image, raw / 255.0, rtol=1e-6)


def test_uint16_png_divided_by_65535(tmp_path):
    picture = (np.arange(H * W).reshape(H, W) * 1000).astype(np.uint16)
    Image.fromarray(picture).save(tmp_path / "deep.png")
    raw = read_array(tmp_path / "deep.png")
    assert raw.dtype == np.uint16 and np.array_equal(raw[0], picture)
    np.testing.assert_allclose(read_image(tmp_path / "deep.png")[0], picture / 65535.0, rtol=1e-6)


@pytest.mark.parametrize(
    "stored, shape",
    [((4, 5), (1, 4, 5)), ((4, 5, 1), (1, 4, 5)), ((4, 5, 3), (1, 4, 5, 3))],
    ids=["2d", "2d-saved-as-xy1", "3d"],
)
def test_nifti_keeps_stored_axis_order(tmp_path, stored, shape):
    data = (np.arange(np.prod(stored)).reshape(stored) * 7 - 50).astype(np.int16)
    path = _nii(tmp_path / "v.nii.gz", data)
    raw = read_array(path)
    assert raw.shape == shape and raw.dtype == np.int16
    assert np.array_equal(raw.reshape(stored), data)  # same voxels in the same order: no axis moves
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == shape
    np.testing.assert_allclose(image.reshape(stored), (data + 50) / float(data.max() + 50), rtol=1e-6)


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.array([[0, 51, 255]], np.uint8), [[0.0, 0.2, 1.0]]),
        (np.array([[True, False]]), [[1.0, 0.0]]),
        (np.array([[-2.0, 0.0, 2.0]], np.float64), [[0.0, 0.5, 1.0]]),
        (np.full((1, 3), 7, np.int32), [[0.0, 0.0, 0.0]]),  # constant -> zeros
    ],
    ids=["uint8", "bool", "float", "constant"],
)
def test_scale_intensities(array, expected):
    out = scale_intensities(array, "x")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-6)


def test_non_finite_pixels_named(tmp_path):
    path = _nii(tmp_path / "nan.nii", np.array([[0.0, np.nan], [1.0, 2.0]], np.float32))
    with pytest.raises(ValueError, match=r"nan.nii: expected finite pixel values"):
        read_image(path)
    assert np.isnan(read_array(path)).any()  # raw reads pass values through


@pytest.mark.parametrize("name", ["broken.png", "broken.nii.gz", "notes.txt"])
def test_unreadable_file_named_on_one_line(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"definitely not an image\nsecond line")
    with pytest.raises(ValueError) as err:
        read_image(path)
    message = str(err.value)
    assert message.startswith(f"{path}: not a readable image file (") and message.endswith(")") and "\n" not in message
    with pytest.raises(FileNotFoundError):
        read_array(tmp_path / "absent.png")


@pytest.mark.parametrize(
    "name, expected",
    [("case_001.nii.gz", "case_001"), ("A.NII.GZ", "A"), ("x.nii", "x"), ("p.v2.png", "p.v2"), ("s.JPEG", "s")],
)
def test_file_id(name, expected):
    assert file_id(f"some/dir/{name}") == expected


def test_listing_and_ids(tmp_path):
    for name in ("b.png", "a.nii.gz", ".hidden.png", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "sub.png").mkdir()
    (tmp_path / "sub.png" / "c.png").write_bytes(b"")
    assert [p.name for p in list_image_files(tmp_path)] == ["a.nii.gz", "b.png"]
    assert {k: p.name for k, p in image_files_by_id(tmp_path).items()} == {"a": "a.nii.gz", "b": "b.png"}
    with pytest.raises(ValueError, match=r"notes.txt: unsupported file extension"):
        list_image_files(tmp_path, strict=True)
    (tmp_path / "a.png").write_bytes(b"")
    with pytest.raises(ValueError, match=r"id 'a' expected one image file, found two: a.nii.gz and a.png"):
        image_files_by_id(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing"):
        list_image_files(tmp_path / "missing")
