"""Intensity policies (data_modules/intensity.py) and DICOM reading (data_modules/io.py).

* a CT task's input equals the documented Hounsfield-unit window, read from NIfTI and from DICOM;
* MR percentiles, real PNG bit depths (sBIT), fixed ranges, refusals and one-time warnings;
* a DICOM series gives the same array and affine as the same volume saved as NIfTI;
* the task's policy travels in its TaskSpec, so ``medcl predict`` scales new images the same way.
"""
import struct
import warnings
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from data_modules import intensity as intensity_module
from data_modules.intensity import CT_WINDOWS, IntensityPolicy, parse_intensity, png_significant_bits
from data_modules.io import file_id, list_image_files, read_array_with_geometry, read_image
from data_modules.prediction import PredictionSource
from data_modules.segmentation import SegmentationDataModule
from data_modules.survival import SurvivalDataModule
from data_modules.synthetic import synthetic_ct, write_dicom_series, write_nifti


@pytest.fixture(autouse=True)
def fresh_warnings():
    """Every warning of data_modules.intensity is given once per process: forget them around each test."""
    intensity_module._WARNED.clear()
    yield
    intensity_module._WARNED.clear()


# ---------------------------------------------------------------- parsing
@pytest.mark.parametrize("value, described", [
    (None, "auto"),
    ("auto", "auto"),
    ("minmax", "minmax"),
    ("ct:abdomen", "ct:abdomen"),
    ("CT:Lung", "ct:lung"),
    ({"kind": "ct", "window": "bone"}, "ct:bone"),
    ("ct:-1000,400", "ct:-1000,400"),
    ({"kind": "ct", "window": [-1000, 400]}, "ct:-1000,400"),
    ("mr", "mr:0.5,99.5"),
    ("mr:1,99", "mr:1,99"),
    ({"kind": "mr", "lower": 1, "upper": 99}, "mr:1,99"),
    ("bits:12", "bits:12"),
    ({"kind": "bits", "bits": 12}, "bits:12"),
    ("range:0,20", "range:0,20"),
    ({"kind": "range", "low": 0, "high": 20}, "range:0,20"),
])
def test_config_forms_parse_and_round_trip(value, described):
    policy = parse_intensity(value, where="here")
    assert policy.describe() == described
    assert parse_intensity(policy.describe()) == policy


@pytest.mark.parametrize("value, message", [
    ("ct", r"here: field 'intensity' expected 'ct:<window>' with a window from \['abdomen'"),
    ("ct:kidney", r"field 'intensity' expected 'ct:<window>' .*found 'ct:kidney'"),
    ("ct:400,-1000", r"expected a CT window with low < high, found 'ct:400,-1000'"),
    ("mr:99,1", r"expected percentiles with 0 <= lower < upper <= 100"),
    ("bits:20", r"expected 'bits:<n>' with n from 8 to 16, found 'bits:20'"),
    ("range:5", r"expected 'range:<low>,<high>' with two numbers, found 'range:5'"),
    ("hu", r"expected one of \['auto', 'ct', 'mr', 'bits', 'range', 'minmax'\]"),
    ({"kind": "ct", "level": 40}, r"field 'intensity' of kind 'ct' expected keys \['window'\], found \['level'\]"),
    ({"kind": "pet"}, r"field 'intensity.kind' expected one of"),
    (42, r"expected a string such as 'ct:abdomen' or a mapping"),
])
def test_bad_config_is_refused_naming_the_field(value, message):
    with pytest.raises(ValueError, match=message):
        parse_intensity(value, where="here")


# ---------------------------------------------------------------- CT windows
@pytest.mark.parametrize("window", sorted(CT_WINDOWS))
def test_ct_window_maps_its_documented_hu_range_to_0_1(window):
    low, high = CT_WINDOWS[window]
    hu = np.array([[low - 500.0, low, (low + high) / 2, high, high + 500.0]], dtype=np.float32)
    out = parse_intensity(f"ct:{window}").apply(hu, "x")
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.5, 1.0, 1.0]], atol=1e-6)


def test_ct_window_refuses_8_bit_images_and_warns_once_without_negative_values():
    policy = parse_intensity("ct:abdomen")
    with pytest.raises(ValueError, match=r"scan.png: intensity 'ct:abdomen' expected Hounsfield units .* found uint8 pixels"):
        policy.apply(np.zeros((1, 4, 4), np.uint8), "scan.png")
    raw = np.full((1, 4, 4), 1064.0, np.float32)  # raw CT numbers without the -1024 intercept
    with pytest.warns(UserWarning, match=r"no value is below 0 .*rescale intercept"):
        policy.apply(raw, "raw.nii.gz")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.apply(raw, "raw.nii.gz")  # once only


def test_ct_task_input_equals_the_documented_window(tmp_path):
    """A CT folder task with ``intensity: ct:abdomen``: the batch is the clipped window, the spec carries the policy."""
    root = tmp_path / "ct"
    volumes = {}
    for split, n in (("train", 2), ("val", 1), ("test", 1)):
        for i in range(n):
            volume, mask = synthetic_ct((16, 16, 4), seed=10 * i + len(split))
            write_nifti(root / split / "images" / f"case{i}.nii.gz", volume)
            write_nifti(root / split / "masks" / f"case{i}.nii.gz", mask)
            volumes[(split, i)] = volume
    dm = SegmentationDataModule(root=str(root), task_name="ct_organ", label_names=["organ"], in_channels=1, spatial_dims=3,
                                intensity="ct:abdomen", augment=False, batch_size=2)
    assert dm.task_spec.intensity == "ct:abdomen"
    dm.setup("fit")
    item = dm.dataset("test")[0]
    low, high = CT_WINDOWS["abdomen"]
    expected = np.clip((volumes[("test", 0)] - low) / (high - low), 0.0, 1.0).transpose(2, 1, 0)  # served axially: (Z, Y, X)
    assert item["image"].dtype == torch.float32
    np.testing.assert_allclose(item["image"][0].numpy(), expected, atol=1e-6)
    # medcl predict reads new images of this task with the same window
    source = PredictionSource(root / "test" / "images", dm.task_spec)
    np.testing.assert_allclose(source.images[0][0], expected, atol=1e-6)


def test_npz_sources_refuse_another_policy_than_auto(tmp_path):
    with pytest.raises(ValueError, match=r"SegmentationDataModule: intensity expected 'auto' for an .npz file .* found 'ct:lung'"):
        SegmentationDataModule(file=str(tmp_path / "x.npz"), intensity="ct:lung")
    with pytest.raises(ValueError, match=r"SurvivalDataModule: intensity expected 'auto' for an .npz images file .* found 'mr:0.5,99.5'"):
        SurvivalDataModule(images=str(tmp_path / "x.npz"), intensity="mr")


# ---------------------------------------------------------------- MR, ranges, minmax, auto
def test_mr_percentiles_per_image_and_channel():
    rng = np.random.default_rng(0)
    image = rng.gamma(2.0, 100.0, size=(2, 32, 32)).astype(np.float32)
    image[1] *= 7.0  # another channel, another scale
    out = parse_intensity("mr:1,99").apply(image, "t1.nii.gz")
    for c in range(2):
        lo, hi = np.percentile(image[c], [1, 99])
        np.testing.assert_allclose(out[c], np.clip((image[c] - lo) / (hi - lo), 0, 1), atol=1e-5)


def test_range_and_minmax():
    suv = np.array([[0.0, 5.0, 10.0, 30.0]], np.float32)
    np.testing.assert_allclose(parse_intensity("range:0,20").apply(suv, "pet"), [[0.0, 0.25, 0.5, 1.0]])
    np.testing.assert_allclose(parse_intensity("minmax").apply(suv, "pet"), [[0.0, 1 / 6, 1 / 3, 1.0]], rtol=1e-6)


def test_auto_min_max_of_float_images_warns_once_naming_the_file_and_the_policies():
    policy = IntensityPolicy()
    with pytest.warns(UserWarning, match=r"ct1.nii.gz: float32 pixel values are min-max scaled .*'ct:<window>'"):
        out = policy.apply(np.array([[-1000.0, 0.0, 1000.0]], np.float32), "ct1.nii.gz")
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        policy.apply(np.array([[1.0, 2.0]], np.float32), "ct2.nii.gz")


def test_non_finite_values_are_refused():
    with pytest.raises(ValueError, match=r"bad.nii.gz: expected finite pixel values"):
        parse_intensity("ct:lung").apply(np.array([[np.nan, 0.0]], np.float32), "bad.nii.gz")


# ---------------------------------------------------------------- PNG bit depth
def _png16(path, array, sbit=None):
    Image.fromarray(array.astype(np.uint16)).save(path)
    if sbit is not None:  # splice an sBIT chunk in after IHDR (8-byte signature + 25-byte IHDR chunk)
        data = path.read_bytes()
        chunk = struct.pack(">I", 1) + b"sBIT" + bytes([sbit]) + struct.pack(">I", zlib.crc32(b"sBIT" + bytes([sbit])))
        path.write_bytes(data[:33] + chunk + data[33:])
    return path


def test_png_bit_depth_from_sbit_chunk_or_config(tmp_path):
    values = np.array([[0, 1000, 4095]], np.uint16)
    declared = _png16(tmp_path / "declared.png", values, sbit=12)
    plain = _png16(tmp_path / "plain.png", values)
    assert png_significant_bits(declared) == 12 and png_significant_bits(plain) is None
    np.testing.assert_allclose(read_image(declared), values[None] / 4095.0, rtol=1e-6)
    with pytest.warns(UserWarning, match=r"plain.png: 16-bit image whose values all fit in 12 bits .*'bits:12'"):
        np.testing.assert_allclose(read_image(plain), values[None] / 65535.0, rtol=1e-6)
    np.testing.assert_allclose(read_image(plain, "bits:12"), values[None] / 4095.0, rtol=1e-6)
    too_big = _png16(tmp_path / "too_big.png", np.array([[0, 5000]], np.uint16))
    with pytest.raises(ValueError, match=r"too_big.png: intensity 'bits:12' expected integers in 0..4095, found 0..5000"):
        read_image(too_big, "bits:12")


# ---------------------------------------------------------------- DICOM
def test_real_ct_dicom_slice_is_read_in_hounsfield_units():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    path = get_testdata_file("CT_small.dcm")
    ds = pydicom.dcmread(path)
    hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    array, geometry = read_array_with_geometry(path)
    assert geometry.stored_axcodes == ("L", "P", "S")
    # columns run to the patient's left and rows to posterior (LPS): reoriented to RAS both are flipped
    np.testing.assert_array_equal(array[0], hu.T[::-1, ::-1])
    out = read_image(path, "ct:-1000,400")
    np.testing.assert_allclose(out[0], np.clip((hu.T[::-1, ::-1] + 1000.0) / 1400.0, 0, 1), atol=1e-6)


def test_dicom_series_equals_the_same_volume_saved_as_nifti(tmp_path):
    volume, _ = synthetic_ct((20, 24, 6), seed=3)
    volume = np.round(volume)
    spacing, origin = (0.8, 0.7, 2.5), (-100.0, -120.0, 40.0)
    series = write_dicom_series(tmp_path / "case0", volume, spacing=spacing, origin=origin, patient_name="DOE^JANE")
    lps_to_ras = np.array([[-spacing[0], 0, 0, -origin[0]], [0, -spacing[1], 0, -origin[1]], [0, 0, spacing[2], origin[2]], [0, 0, 0, 1]])
    nifti = write_nifti(tmp_path / "case0.nii.gz", volume.astype(np.float32), affine=lps_to_ras)
    from_dicom, dicom_geometry = read_array_with_geometry(series)
    from_nifti, nifti_geometry = read_array_with_geometry(nifti)
    assert from_dicom.shape == from_nifti.shape == (1, 20, 24, 6)
    np.testing.assert_array_equal(from_dicom, from_nifti)
    np.testing.assert_allclose(dicom_geometry.affine, nifti_geometry.affine, atol=1e-5)
    assert from_dicom.dtype == np.float32 and from_dicom.min() == pytest.approx(volume.min())  # HU, intercept applied
    # a series folder is one image, named by its folder
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("not DICOM")
    assert [p.name for p in list_image_files(tmp_path)] == ["case0", "case0.nii.gz"]
    assert file_id(series) == "case0"


def test_a_folder_that_is_not_a_series_is_refused(tmp_path):
    (tmp_path / "mixed").mkdir()
    (tmp_path / "mixed" / "a.dcm").write_bytes(b"x")
    (tmp_path / "mixed" / "b.txt").write_text("x")
    with pytest.raises(ValueError, match=r"mixed: expected an image file or a DICOM series \(a folder of .dcm files only\), found a folder"):
        read_array_with_geometry(tmp_path / "mixed")
