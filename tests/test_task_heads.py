"""Prognosis and segmentation heads, the C-index metric and volume encoding: shapes and behaviour."""
import math

import numpy as np
import pytest
import torch

from framework.backbone import CLIPBackbone
from framework.heads import PrognosisHead, SegmentationHead
from framework.heads.segmentation import plan_decoder
from framework.metrics import ConcordanceIndex
from framework.model import MedCLModel
from framework.core.specs import TaskSpec

SEG = TaskSpec(name="seg", kind="segmentation", label_names=["polyp"])
PROG = TaskSpec(name="prog", kind="prognosis", time_bins=[0.0, 2.0, 5.0, 10.0, 20.0])


def survival_target(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.stack([torch.rand(n, generator=g) * 20, (torch.rand(n, generator=g) > 0.3).float()], dim=1)


# ---------------------------------------------------------------- segmentation
@pytest.mark.parametrize("arch", ["medcl-vit-tiny", "medcl-resnet18-tiny"])
@pytest.mark.parametrize("image_size", [28, 64])
@pytest.mark.parametrize("data_size, channels", [(64, 3), (40, 1)])
def test_segmentation_logits_at_input_resolution(arch, image_size, data_size, channels):
    model = MedCLModel({"model_name": arch, "image_size": image_size})
    head = model.add_task(TaskSpec(name="seg", kind="segmentation", label_names=["a", "b"], in_channels=channels))
    images = torch.rand(2, channels, data_size, data_size)
    logits = model(images, "seg")
    assert logits.shape == (2, 3, data_size, data_size)  # background + 2 labels, at the data's resolution
    loss = head.loss(logits, torch.randint(0, 3, (2, data_size, data_size)))
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    # the decoder reads several depths of the tower and the tower itself gets gradients
    assert len(head.projections) >= 2
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.backbone.clip.visual.parameters())


@pytest.mark.parametrize("sizes, input_size, expected", [
    ([7, 7, 7, 7], 28, (2, [1, 1, 1, 0])),            # tiny ViT at 28 px: blocks fused at 14 px
    ([16, 16, 16, 16], 64, (2, [1, 1, 1, 0])),
    ([14, 14, 14, 14], 224, (4, [3, 2, 1, 0])),        # ViT-B/16 with 4 depths: UNETR's assignment
    ([32, 16, 8, 4, 2], 64, (5, [4, 3, 2, 1, 0])),     # ResNet pyramid: every map at its own scale
])
def test_decoder_plan(sizes, input_size, expected):
    assert plan_decoder(sizes, input_size) == expected


def test_segmentation_volumes_are_segmented_slice_by_slice():
    model = MedCLModel({"model_name": "medcl-vit-tiny"})
    head = model.add_task(TaskSpec(name="seg3", kind="segmentation", label_names=["x"], in_channels=1, spatial_dims=3))
    volumes = torch.rand(2, 1, 5, 28, 28)
    model.eval()
    logits = model(volumes, "seg3")
    assert logits.shape == (2, 2, 5, 28, 28)
    one_slice = head._forward_2d(model.backbone, volumes[:, :, 3])
    assert torch.allclose(logits[:, :, 3], one_slice, atol=1e-5)
    assert head.predict(logits)["mask"].shape == (2, 5, 28, 28)


def test_segmentation_metrics_and_target_checks():
    model = MedCLModel({"model_name": "medcl-vit-tiny"})
    head = model.add_task(SEG)
    mask = torch.zeros(2, 28, 28, dtype=torch.long)
    mask[:, 5:15, 5:15] = 1
    perfect = torch.stack([1 - mask, mask], dim=1).float() * 10
    metrics = head.make_metrics()
    metrics.update(**head.metric_inputs(perfect, mask))
    values = metrics.compute()
    assert values["dice"] == pytest.approx(1.0) and values["iou"] == pytest.approx(1.0)
    half = mask.clone()
    half[:, 5:10] = 0  # half the polyp missed: Dice = 2*50/(50+100)
    metrics.reset()
    metrics.update(**head.metric_inputs(torch.stack([1 - half, half], 1).float(), mask))
    assert metrics.compute()["dice"] == pytest.approx(2 * 50 / 150, abs=1e-4)
    with pytest.raises(ValueError, match=r"mask expected shape \(2, 28, 28\).*found \(2, 32, 32\)"):
        head.loss(perfect, torch.zeros(2, 32, 32, dtype=torch.long))


def test_segmentation_probe_does_not_touch_batchnorm_statistics():
    backbone = CLIPBackbone("medcl-resnet18-tiny")
    before = {k: v.clone() for k, v in backbone.state_dict().items() if "running" in k}
    shapes = backbone.intermediate_shapes()
    after = {k: v for k, v in backbone.state_dict().items() if "running" in k}
    assert len(shapes) == 5 and backbone.training
    assert all(torch.equal(before[k], after[k]) for k in before)


# ---------------------------------------------------------------- prognosis
@pytest.mark.parametrize("loss, width", [("cox", None), ("mtlr", 5)])
@pytest.mark.parametrize("hidden_dim", [0, 32])
def test_prognosis_outputs_and_loss(loss, width, hidden_dim):
    model = MedCLModel({"model_name": "medcl-vit-tiny"}, {"prognosis": {"loss": loss, "hidden_dim": hidden_dim}})
    head = model.add_task(PROG)
    out = model(torch.rand(6, 1, 28, 28), "prog")
    assert out.shape == ((6,) if width is None else (6, width))
    value = head.loss(out, survival_target(6))
    value.backward()
    assert torch.isfinite(value)
    predicted = head.predict(out)
    assert predicted["risk"].shape == (6,)
    if loss == "mtlr":
        survival = predicted["survival"]
        assert survival.shape == (6, 5) and (survival.diff(dim=1) <= 1e-6).all() and ((survival >= 0) & (survival <= 1)).all()


@pytest.mark.parametrize("loss", ["cox", "mtlr"])
@pytest.mark.parametrize("target", [torch.tensor([[4.0, 1.0]]), torch.tensor([[4.0, 0.0], [2.0, 0.0]])], ids=["one sample", "no event"])
def test_prognosis_loss_on_degenerate_batches(loss, target):
    """A replayed sub-batch may hold one exemplar, or only censored ones: training goes on."""
    head = PrognosisHead(PROG, 8, loss=loss)
    outputs = head.net(torch.randn(len(target), 8))
    if loss == "cox":
        outputs = outputs[:, 0]  # one log-risk per sample, as forward() returns it
    value = head.loss(outputs, target)
    value.backward()
    assert torch.isfinite(value) and value.ndim == 0
    if loss == "cox":
        assert value.item() == 0.0


def test_mtlr_risk_orders_by_predicted_survival():
    head = PrognosisHead(PROG, 8, loss="mtlr")
    early = torch.tensor([[5.0, 0.0, 0.0, 0.0, 0.0]])  # mass on the first bin: dies early
    late = torch.tensor([[0.0, 0.0, 0.0, 0.0, 5.0]])
    assert head.risk(early) > head.risk(late)


@pytest.mark.parametrize("bad, match", [
    (torch.tensor([[-1.0, 1.0]]), "survival time expected finite and >= 0, found -1.0"),
    (torch.tensor([[3.0, 2.0]]), "event flag expected 0 or 1, found 2.0"),
    (torch.tensor([3.0]), r"expected shape \(B, 2\) holding \(time, event\), found \(1,\)"),
])
def test_prognosis_targets_are_checked(bad, match):
    head = PrognosisHead(TaskSpec(name="prog", kind="prognosis"), 8)
    with pytest.raises(ValueError, match=match):
        head.loss(torch.zeros(1), bad)


@pytest.mark.parametrize("kwargs, match", [
    ({"loss": "weibull"}, "loss expected one of"),
    ({"hidden_dim": -1}, "hidden_dim expected an integer >= 0"),
])
def test_prognosis_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PrognosisHead(PROG, 8, **kwargs)
    with pytest.raises(ValueError, match="loss 'mtlr' needs at least 2 cut points in the task's time_bins"):
        PrognosisHead(TaskSpec(name="p", kind="prognosis"), 8, loss="mtlr")


def test_concordance_index_over_the_whole_set_matches_lifelines():
    from lifelines.utils import concordance_index

    rng = np.random.default_rng(0)
    risk = rng.normal(size=300)
    time = rng.exponential(scale=np.exp(-risk))
    event = (rng.random(300) < 0.7).astype(float)
    metric = ConcordanceIndex()
    for chunk in np.array_split(np.arange(300), 7):  # computed over all batches, not averaged per batch
        metric.update(torch.tensor(risk[chunk]), torch.tensor(np.stack([time[chunk], event[chunk]], 1)))
    expected = concordance_index(time, -risk, event)
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-6)
    assert 0.6 < expected < 1.0


def test_concordance_index_without_events_is_nan():
    metric = ConcordanceIndex()
    metric.update(torch.rand(5), torch.stack([torch.rand(5), torch.zeros(5)], 1))
    assert math.isnan(float(metric.compute()))


# ---------------------------------------------------------------- volumes
def test_volumes_are_encoded_slice_by_slice_and_averaged():
    backbone = CLIPBackbone("medcl-vit-tiny").eval()
    volume = torch.rand(2, 1, 6, 28, 28)
    slices = torch.stack([backbone.encode_image(volume[:, :, d], normalize=False) for d in range(6)], dim=2)
    expected = torch.nn.functional.normalize(slices.mean(dim=2), dim=-1)
    assert torch.allclose(backbone.encode_image(volume), expected, atol=1e-5)


def test_large_volumes_use_sliding_windows_of_the_model_input():
    backbone = CLIPBackbone("medcl-vit-tiny").eval()
    big = torch.rand(1, 1, 4, 56, 56)  # twice the 28-px model input in-plane: 2x2 windows, not a resize
    windows = [big[..., i : i + 28, j : j + 28] for i in (0, 28) for j in (0, 28)]
    expected = torch.stack([backbone.encode_volume(w, normalize=False) for w in windows]).mean(0)
    assert torch.allclose(backbone.encode_volume(big, normalize=False), expected, atol=1e-4)
    assert not torch.allclose(backbone.encode_volume(big), backbone.encode_volume(torch.nn.functional.interpolate(big, size=(4, 28, 28))), atol=1e-3)


def test_a_volume_given_to_a_2d_only_task_is_refused():
    model = MedCLModel({"model_name": "medcl-vit-tiny"})
    model.add_task(TaskSpec(name="xray", kind="classification", class_names=["a", "b"], in_channels=1))
    with pytest.raises(ValueError, match=r"task 'xray' \(spatial_dims=2\) expected \(B, C, H, W\) images; it is 2D-only, found a batch of shape \(2, 1, 8, 28, 28\)"):
        model(torch.rand(2, 1, 8, 28, 28), "xray")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_mtlr_discretisation_in_torch_equals_pycox(seed):
    """The on-device discretisation of survival targets gives pycox's LabTransDiscreteTime indices and event flags:
    ties with cut points, times after the last cut (censored there), batches without any event."""
    import warnings

    from pycox.preprocessing.label_transforms import LabTransDiscreteTime

    rng = np.random.default_rng(seed)
    cuts = np.unique(np.round(rng.uniform(0, 10, 6), 1))
    cuts[0] = 0.0
    spec = TaskSpec(name="risk", kind="prognosis", time_bins=tuple(float(c) for c in cuts))
    head = PrognosisHead(spec, 8, loss="mtlr")
    times = np.concatenate([rng.uniform(0, 12, 40), cuts, cuts + 1e-3]).astype(np.float32)
    events = np.concatenate([rng.integers(0, 2, 40), np.ones(len(cuts)), np.zeros(len(cuts))]).astype(np.float32)
    for mask in (np.ones(len(times), bool), events == 0):  # with events, and a batch of censorings only
        t, e = times[mask], events[mask]
        reference = LabTransDiscreteTime(cuts)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reference.fit(cuts, np.ones_like(cuts))
        # pycox fails on a batch without any event: one dummy event in front, dropped again
        idx, obs = (a[1:] for a in reference.transform(np.concatenate([[cuts[0]], t]), np.concatenate([[1.0], e])))
        index, observed = head.discretise(torch.from_numpy(t), torch.from_numpy(e))
        assert index.dtype == torch.long and observed.dtype == torch.float32
        np.testing.assert_array_equal(index.numpy(), idx)
        np.testing.assert_array_equal(observed.numpy(), obs)
