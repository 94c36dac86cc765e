"""One volume slab by slab (data_modules/volume_slabs.py, framework/volume_inference.py).

* slabs of a memory-mapped NIfTI equal the whole volume read, scaled and laid out axially, for
  files stored RAS or flipped (LPI);
* slab-by-slab segmentation written through the memory-mapped writer equals the whole-volume pass,
  on the input's grid; the slab-wise embedding equals the whole-volume embedding;
* whole-volume intensity policies, other planes and overwrites are refused.
"""
import nibabel as nib
import numpy as np
import pytest
import torch

from data_modules.intensity import parse_intensity
from data_modules.io import read_array, to_axial
from data_modules.synthetic import synthetic_ct, write_large_ct, write_nifti
from data_modules.volume_slabs import NiftiSlabs, NiftiSlabWriter
from framework.model import MedCLModel
from framework.core.specs import TaskSpec
from framework.volume_inference import encode_volume_slabs, segment_volume_slabs


def _whole(path, intensity="ct:abdomen"):
    return to_axial(parse_intensity(intensity).apply(read_array(path), path))


@pytest.mark.parametrize("stored", ["RAS", "LPI"])
@pytest.mark.parametrize("slab", [1, 4, 7, 30])
def test_slabs_equal_the_whole_volume(tmp_path, stored, slab):
    volume, _ = synthetic_ct((20, 16, 9), seed=2)
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    data = volume
    if stored == "LPI":  # the same world grid stored with every axis flipped
        affine = np.diag([-0.8, -0.8, -2.5, 1.0])
        affine[:3, 3] = [19 * 0.8, 15 * 0.8, 8 * 2.5]
        data = volume[::-1, ::-1, ::-1].copy()
    path = write_nifti(tmp_path / "v.nii", data.astype(np.int16), affine=affine)
    slabs = NiftiSlabs(path, slab=slab, intensity="ct:abdomen")
    parts = list(slabs)
    assert [start for start, _ in parts] == list(range(0, 9, slab))
    assert all(part.shape[1] == min(slab, 9 - start) for start, part in parts)
    joined = torch.cat([part for _, part in parts], dim=1).numpy()
    np.testing.assert_array_equal(joined, _whole(path))
    np.testing.assert_allclose(slabs.affine, nib.as_closest_canonical(nib.load(str(path))).affine, atol=1e-6)


def test_slab_reading_refuses_whole_volume_policies_and_other_planes(tmp_path):
    path = write_large_ct(tmp_path / "v.nii", (16, 12, 6), slab=4)
    with pytest.raises(ValueError, match=r"v.nii: field 'intensity' expected a voxel-wise policy .* found 'mr:0.5,99.5'"):
        NiftiSlabs(path, intensity="mr")
    sagittal = np.array([[0, 0, 1.0, 0], [1.0, 0, 0, 0], [0, 1.0, 0, 0], [0, 0, 0, 1]])  # stored axis 3 runs left-right
    other = write_nifti(tmp_path / "sag.nii", np.zeros((4, 5, 6), np.int16), affine=sagittal)
    with pytest.raises(ValueError, match=r"sag.nii: expected a volume stored in axial slices .* found orientation ASR"):
        NiftiSlabs(other)
    with pytest.raises(ValueError, match=r"slab expected a positive integer, found 0"):
        NiftiSlabs(path, slab=0)


def test_writer_never_overwrites_and_writes_uncompressed_only(tmp_path):
    NiftiSlabWriter(tmp_path / "m.nii", (4, 4, 4)).close()
    with pytest.raises(FileExistsError, match=r"m.nii: exists; MedCL never overwrites a prediction"):
        NiftiSlabWriter(tmp_path / "m.nii", (4, 4, 4))
    with pytest.raises(ValueError, match=r"path expected a file ending in .nii .* found 'm.nii.gz'"):
        NiftiSlabWriter(tmp_path / "m.nii.gz", (4, 4, 4))



def test_writer_places_each_slab_and_refuses_slabs_that_do_not_fit(tmp_path):
    """Slabs written out of order land at their slices, in NIfTI's (X, Y, Z) order; a misfit slab is refused."""
    expected = np.arange(5 * 3 * 7, dtype=np.uint8).reshape(7, 3, 5)  # (Z, Y, X)
    with NiftiSlabWriter(tmp_path / "m.nii", (5, 3, 7), np.diag([2.0, 2.0, 3.0, 1.0])) as writer:
        writer.write(4, expected[4:])
        writer.write(0, expected[:4])
        with pytest.raises(ValueError, match=r"m.nii: expected slices 6.. laid out \(k, 3, 5\) within 7 slices, found shape \(2, 3, 5\)"):
            writer.write(6, expected[:2])
        with pytest.raises(ValueError, match=r"laid out \(k, 3, 5\) .* found shape \(1, 5, 3\)"):
            writer.write(0, expected[:1].transpose(0, 2, 1))
    image = nib.load(str(tmp_path / "m.nii"))
    np.testing.assert_array_equal(np.asarray(image.dataobj), expected.transpose(2, 1, 0))
    np.testing.assert_array_equal(image.affine, np.diag([2.0, 2.0, 3.0, 1.0]))

def _model():
    torch.manual_seed(0)
    model = MedCLModel({"model_name": "medcl-vit-tiny"}, {"segmentation": {"feature_size": 8}})
    model.add_task(TaskSpec(name="organ", kind="segmentation", label_names=("organ",), in_channels=1, spatial_dims=3,
                            image_size=(16, 16), depth_axis="axial"))
    return model.eval()


def test_slab_segmentation_and_embedding_equal_the_whole_volume_pass(tmp_path):
    path = write_large_ct(tmp_path / "ct.nii", (24, 20, 11), slab=5, seed=3)
    model = _model()
    whole = torch.from_numpy(np.ascontiguousarray(_whole(path)))[None]  # (1, 1, Z, Y, X)
    with torch.no_grad():
        expected = model(whole, "organ")[0].argmax(0).numpy().astype(np.uint8)  # (Z, Y, X)
        with model.route(model.specs["organ"]):
            expected_embedding = model.backbone.encode_image(whole)[0]
    slabs = NiftiSlabs(path, slab=4)
    out = tmp_path / "pred" / "ct_mask.nii"
    with NiftiSlabWriter(out, slabs.shape, slabs.affine) as writer:
        assert segment_volume_slabs(model, "organ", slabs, writer.write) == 11
    written = nib.load(str(out))
    np.testing.assert_allclose(written.affine, slabs.affine)
    np.testing.assert_array_equal(np.asarray(written.dataobj), expected.transpose(2, 1, 0))  # (X, Y, Z) on the input grid
    torch.testing.assert_close(encode_volume_slabs(model, "organ", NiftiSlabs(path, slab=3)), expected_embedding, atol=1e-5, rtol=1e-4)


def test_slab_segmentation_refuses_other_tasks():
    model = MedCLModel({"model_name": "medcl-vit-tiny"})
    model.add_task(TaskSpec(name="cls", kind="classification", class_names=("a", "b"), in_channels=1, spatial_dims=3))
    with pytest.raises(ValueError, match=r"task 'cls' expected a volume segmentation task, found kind 'classification'"):
        segment_volume_slabs(model, "cls", [], lambda *a: None)
