"""LitData streaming source (data_modules/streaming.py): optimised once from a volume collection, served with the same items.

* the streamed items equal the ``VolumeDataModule`` items they were made from (same pipeline, same order), and the task spec travels;
* an existing collection is never overwritten; a folder without the description, or chunks that do not match it, are refused;
* LitData's own working folders are private, so optimising never empties a folder of the user's.
"""
import json

import pytest
import torch

from data_modules.streaming import STREAM_INFO, StreamingDataModule, optimize_collection
from data_modules.volumes import VolumeDataModule
from test_volume_data import _collection

pytest.importorskip("litdata")
pytestmark = pytest.mark.heavy  # LitData spawns worker processes: about 2 minutes (python -m pytest -m heavy)


@pytest.fixture(scope="module")
def optimised(tmp_path_factory):
    root = tmp_path_factory.mktemp("streaming")
    table, _ = _collection(root / "ct")
    source = VolumeDataModule(table=str(table), task_name="ct_organ", label_names=["organ"], intensity="ct:abdomen",
                              spacing=[1.6, 1.6, 2.5], spatial_size=[6, 8, 12], cache="none", augment=False)
    source.setup("fit")
    keep = root / "chunks" / "keep.txt"  # a file of the user's beside the output: never removed
    keep.parent.mkdir(parents=True)
    keep.write_text("mine")
    return source, optimize_collection(source, root / "chunks" / "ct", num_workers=1), keep


def test_streamed_items_equal_the_collection_they_were_made_from(optimised):
    source, folder, keep = optimised
    streamed = StreamingDataModule(str(folder), augment=False)
    streamed.setup("fit")
    assert streamed.task_spec == source.task_spec and streamed.task_spec.depth_axis == "axial"
    for split in ("train", "val", "test"):
        assert len(streamed.dataset(split)) == len(source.dataset(split))
        assert streamed.ids(split) == source.ids(split)
        for i in range(len(source.dataset(split))):
            a, b = source.dataset(split)[i], streamed.dataset(split)[i]
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["target"], b["target"])
    assert keep.read_text() == "mine"


def test_training_items_are_flipped_image_and_mask_together(optimised):
    _, folder, _ = optimised
    streamed = StreamingDataModule(str(folder), augment=True)
    streamed.setup("fit")
    plain = StreamingDataModule(str(folder), augment=False)
    plain.setup("fit")
    torch.manual_seed(0)
    flipped = [streamed.dataset("train")[0] for _ in range(8)]
    original = plain.dataset("train")[0]
    assert any(not torch.equal(item["image"], original["image"]) for item in flipped)
    for item in flipped:  # every variant is one flip pattern applied to both
        matches = [dims for dims in ([], [1], [2], [3], [1, 2], [1, 3], [2, 3], [1, 2, 3])
                   if torch.equal(item["image"], original["image"].flip(dims) if dims else original["image"])]
        assert matches
        dims = [d - 1 for d in matches[0]]
        assert torch.equal(item["target"], original["target"].flip(dims) if dims else original["target"])


def test_collections_are_never_overwritten_and_bad_folders_are_refused(optimised, tmp_path):
    source, folder, _ = optimised
    with pytest.raises(FileExistsError, match=r"holds an optimised collection already; MedCL never overwrites one"):
        optimize_collection(source, folder)
    with pytest.raises(FileNotFoundError, match=r"medcl_stream.json not found; write the collection with data_modules.streaming.optimize_collection"):
        StreamingDataModule(str(tmp_path))
    info = json.loads((folder / STREAM_INFO).read_text())
    bad = tmp_path / "bad"
    bad.mkdir()
    for split in ("train", "val", "test"):
        (bad / split).symlink_to(folder / split)
    (bad / STREAM_INFO).write_text(json.dumps(dict(info, counts=dict(info["counts"], train=99))))
    dm = StreamingDataModule(str(bad))
    with pytest.raises(ValueError, match=r"bad/train: expected 99 items \(medcl_stream.json\), found 3 in the chunks"):
        dm.setup("fit")
    (bad / STREAM_INFO).write_text(json.dumps(dict(info, format=7)))
    with pytest.raises(ValueError, match=r"field 'format' expected 1, found 7"):
        StreamingDataModule(str(bad))
    with pytest.raises(ValueError, match=r"optimize_collection: expected a data_modules.VolumeDataModule, found str"):
        optimize_collection("ct", tmp_path / "x")
