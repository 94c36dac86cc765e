"""CompileModels (framework/callbacks/compile.py): torch.compile in place, once per module, heads grown later too."""
import pytest
import torch

from framework.callbacks import CompileModels
from framework.model import MedCLModel
from framework.core.specs import TaskSpec


def _model():
    torch.manual_seed(0)
    model = MedCLModel({"model_name": "medcl-vit-tiny"}, {"segmentation": {"feature_size": 8}})
    model.add_task(TaskSpec(name="c", kind="classification", class_names=("a", "b"), in_channels=1))
    return model.eval()


class _Module:
    def __init__(self, model):
        self.model = model

    def all_models(self):
        return [self.model]


def test_every_tower_and_head_is_compiled_once_including_heads_grown_later(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, **kw: calls.append((type(self).__name__, kw)))
    model = _model()
    callback = CompileModels(mode="reduce-overhead", heads=True)
    callback.on_fit_start(None, _Module(model))
    callback.on_train_epoch_start(None, _Module(model))
    assert [name for name, _ in calls] == ["AnySizeVisionTransformer", "ClassificationHead"]
    assert all(kw == {"mode": "reduce-overhead", "dynamic": None} for _, kw in calls)
    model.add_task(TaskSpec(name="s", kind="segmentation", label_names=("x",), in_channels=1))
    callback.on_train_epoch_start(None, _Module(model))
    assert [name for name, _ in calls][2:] == ["SegmentationHead"]
    calls.clear()
    CompileModels().on_fit_start(None, _Module(model))
    assert [name for name, _ in calls] == ["AnySizeVisionTransformer"]  # heads off by default


@pytest.mark.parametrize("kwargs, message", [
    ({"mode": "fast"}, r"CompileModels: mode expected one of \['default', 'reduce-overhead', 'max-autotune', 'max-autotune-no-cudagraphs'\], found 'fast'"),
    ({"heads": "yes"}, r"CompileModels: heads expected true or false, found 'yes'"),
])
def test_bad_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CompileModels(**kwargs)


@pytest.mark.heavy  # inductor compiles C++ kernels: about 2 minutes on 2 CPU cores
def test_compiled_forward_equals_eager_and_checkpoint_keys_are_unchanged():
    model = _model()
    model.add_task(TaskSpec(name="s", kind="segmentation", label_names=("x",), in_channels=1))
    images = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        eager = model(images, "c"), model(images, "s")
    keys = list(model.state_dict())
    CompileModels(heads=True).on_fit_start(None, _Module(model))
    with torch.no_grad():
        compiled = model(images, "c"), model(images, "s")
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    assert list(model.state_dict()) == keys
