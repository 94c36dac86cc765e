"""PredictionWriter: what `medcl predict` writes for each kind (CSV columns, PNG and NIfTI masks)."""
import csv
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from framework.callbacks import PredictionWriter
from framework.model import MedCLModel
from framework.core.specs import TaskSpec


class Module:
    """The part of a paradigm the writer uses: ``model_for(task).head(task)``."""

    def __init__(self, model):
        self.model = model

    def model_for(self, task):
        return self.model


def write(tmp_path, model, task, images, **extra):
    writer = PredictionWriter(output_dir=str(tmp_path))
    trainer = SimpleNamespace(log_dir=None, default_root_dir=str(tmp_path), is_global_zero=True)
    writer.on_predict_start(trainer, None)
    head = model.head(task)
    with torch.no_grad():
        prediction = {task: {**head.predict(model(images, task)), **extra}}
    writer.write_on_batch_end(trainer, Module(model), prediction, None, None, 0, 0)
    writer.on_predict_end(trainer, None)
    with open(tmp_path / task / "predictions.csv") as fh:
        return list(csv.DictReader(fh))


def test_volume_masks_are_written_as_nifti(tmp_path):
    import nibabel as nib

    model = MedCLModel({"model_name": "medcl-vit-tiny"}).eval()
    model.add_task(TaskSpec(name="organs3d", kind="segmentation", label_names=["liver", "spleen"], in_channels=1, spatial_dims=3))
    volumes = torch.rand(2, 1, 4, 28, 28)
    rows = write(tmp_path, model, "organs3d", volumes, id=["caseA", "caseB"])
    assert [r["id"] for r in rows] == ["caseA", "caseB"]
    expected = model(volumes, "organs3d").argmax(1)
    for name, mask in zip(("caseA", "caseB"), expected):
        stored = np.asarray(nib.load(str(tmp_path / "organs3d" / "masks" / f"{name}.nii.gz")).dataobj)
        assert stored.shape == (4, 28, 28) and np.array_equal(stored, mask.numpy())  # label indices, 3 labels


def test_multilabel_masks_keep_label_indices_and_rows_are_numbered(tmp_path):
    from PIL import Image

    model = MedCLModel({"model_name": "medcl-vit-tiny"}).eval()
    model.add_task(TaskSpec(name="seg", kind="segmentation", label_names=["a", "b"]))
    images = torch.rand(3, 3, 28, 28)
    rows = write(tmp_path, model, "seg", images)
    assert [r["index"] for r in rows] == ["0", "1", "2"] and "id" not in rows[0]
    stored = np.asarray(Image.open(tmp_path / "seg" / "masks" / "1.png"))
    assert np.array_equal(stored, model(images, "seg").argmax(1)[1].numpy())
    # each label's share of the image, as a CSV column
    assert float(rows[1]["area(a)"]) == pytest.approx((stored == 1).mean(), abs=1e-5)
    assert float(rows[1]["area(b)"]) == pytest.approx((stored == 2).mean(), abs=1e-5)


@pytest.mark.parametrize("loss", ["cox", "mtlr"])
def test_prognosis_rows_hold_risk_and_the_known_outcome(tmp_path, loss):
    model = MedCLModel({"model_name": "medcl-vit-tiny"}, {"prognosis": {"loss": loss}}).eval()
    model.add_task(TaskSpec(name="os", kind="prognosis", in_channels=1, time_bins=[0.0, 6.0, 12.0, 24.0]))
    target = torch.tensor([[3.0, 1.0], [30.0, 0.0]])
    rows = write(tmp_path, model, "os", torch.rand(2, 1, 28, 28), target=target)
    assert [(float(r["time"]), int(r["event"])) for r in rows] == [(3.0, 1), (30.0, 0)]
    assert all(np.isfinite(float(r["risk"])) for r in rows)
    assert ("S(t=24)" in rows[0]) == (loss == "mtlr")
