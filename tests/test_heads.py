import math

import pytest
import torch
from torch import nn

from framework.backbone import CLIPBackbone
from framework.heads import HEAD_REGISTRY, ClassificationHead, MultilabelHead, TaskHead, build_head, register_head
from framework.model import MedCLModel
from framework.core.specs import TaskSpec


@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return CLIPBackbone("medcl-vit-tiny")


def spec(n=3, kind="classification", name="toy"):
    return TaskSpec(name=name, kind=kind, class_names=[f"class {i}" for i in range(n)], prompt_template="an image of {}")


@pytest.mark.parametrize("n_classes", [2, 5, 11])
@pytest.mark.parametrize("learn", [False, True])
@pytest.mark.parametrize("batch, channels", [(1, 1), (4, 3)])
def test_classification_logits_shape(backbone, n_classes, learn, batch, channels):
    head = build_head(spec(n_classes), backbone.embed_dim, {"learn_class_embeddings": learn})
    head.on_add(backbone)
    logits = head(backbone, torch.rand(batch, channels, 28, 28))
    assert logits.shape == (batch, n_classes)


def test_logits_are_scaled_cosine_similarity(backbone):
    head = ClassificationHead(spec(4), backbone.embed_dim, init_temperature=0.05)
    images = torch.rand(3, 3, 28, 28)
    backbone.eval()
    expected = 20.0 * backbone.encode_image(images) @ backbone.encode_prompts(spec(4).prompts).t()
    assert torch.allclose(head(backbone, images), expected, atol=1e-4)
    assert math.isclose(head.logit_scale.exp().item(), 20.0, rel_tol=1e-5)


def test_learned_class_embeddings_start_at_text_embeddings(backbone):
    head = ClassificationHead(spec(3), backbone.embed_dim, learn_class_embeddings=True)
    assert torch.count_nonzero(head.class_embeddings) == 0
    head.on_add(backbone)
    assert torch.allclose(head.class_embeddings, backbone.encode_prompts(spec(3).prompts))


def test_temperature_and_class_embeddings_get_gradients(backbone):
    head = ClassificationHead(spec(3), backbone.embed_dim, learn_class_embeddings=True)
    head.on_add(backbone)
    loss = head.loss(head(backbone, torch.rand(4, 3, 28, 28)), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert head.logit_scale.grad is not None and head.logit_scale.grad.abs() > 0
    assert head.class_embeddings.grad is not None and head.class_embeddings.grad.abs().sum() > 0


def test_logit_scale_is_clamped(backbone):
    head = ClassificationHead(spec(2), backbone.embed_dim, max_logit_scale=100.0)
    with torch.no_grad():
        head.logit_scale.fill_(10.0)  # exp(10) >> 100
    logits = head(backbone, torch.rand(2, 3, 28, 28))
    assert logits.abs().max() <= 100.0 + 1e-4


@pytest.mark.parametrize("kwargs, field", [({"init_temperature": 0.0}, "init_temperature"), ({"label_smoothing": 1.0}, "label_smoothing"), ({"max_logit_scale": 2.0}, "max_logit_scale")])
def test_head_argument_validation(kwargs, field):
    with pytest.raises(ValueError, match=field):
        ClassificationHead(spec(2), 128, **kwargs)


def test_target_shape_checked(backbone):
    head = ClassificationHead(spec(3), backbone.embed_dim)
    with pytest.raises(ValueError, match="target expected shape"):
        head.loss(torch.zeros(4, 3), torch.zeros(4, 1, dtype=torch.long))


def test_multilabel_head_loss_and_metrics(backbone):
    head = MultilabelHead(spec(4, kind="multilabel"), backbone.embed_dim)
    out = head(backbone, torch.rand(5, 1, 28, 28))
    target = torch.randint(0, 2, (5, 4))
    assert head.loss(out, target).ndim == 0
    metrics = head.make_metrics()
    metrics.update(**head.metric_inputs(out, target))
    assert set(metrics.compute()) == {"acc", "auroc"}
    predicted = head.predict(out)
    assert predicted["prediction"].shape == (5, 4) and set(predicted["prediction"].unique().tolist()) <= {0, 1}
    assert torch.allclose(predicted["probabilities"], out.sigmoid())


def test_registry_lists_kinds_and_refuses_unregistered():
    assert set(HEAD_REGISTRY) == {"classification", "multilabel", "prognosis", "segmentation"}
    served_by = HEAD_REGISTRY.pop("segmentation")
    try:
        with pytest.raises(ValueError, match="unknown head kind 'segmentation'"):
            build_head(TaskSpec(name="seg", kind="segmentation", label_names=["polyp"]), 128)
    finally:
        HEAD_REGISTRY["segmentation"] = served_by
    with pytest.raises(ValueError, match="register_head: kind expected a name"):
        register_head("not a kind!")
    with pytest.raises(ValueError, match="'classification' is already registered to framework.heads.classification.ClassificationHead"):
        register_head("classification")(type("Other", (TaskHead,), {}))
    with pytest.raises(ValueError, match="invalid head_args"):
        build_head(spec(2), 128, {"no_such_option": 1})


def test_a_new_kind_plugs_in_without_touching_the_model(backbone):
    """A head registered from outside is built by MedCLModel.add_task as is."""
    built_in = HEAD_REGISTRY.pop("prognosis")

    @register_head("prognosis")
    class RiskHead(TaskHead):
        score_name = "mse"

        def __init__(self, spec, embed_dim):
            super().__init__(spec, embed_dim)
            self.linear = nn.Linear(embed_dim, 1)

        def forward(self, backbone, images):
            return self.linear(backbone.encode_image(images)).squeeze(-1)

        def loss(self, outputs, target):
            return ((outputs - target) ** 2).mean()

        def make_metrics(self):
            from torchmetrics import MeanSquaredError, MetricCollection

            return MetricCollection({"mse": MeanSquaredError()})

        def predict(self, outputs):
            return {"risk": outputs}

    try:
        model = MedCLModel({"model_name": "medcl-vit-tiny"})
        model.add_task(TaskSpec(name="risk", kind="prognosis"))
        assert isinstance(model.head("risk"), RiskHead)
        assert model(torch.rand(2, 1, 28, 28), task="risk").shape == (2,)
    finally:
        HEAD_REGISTRY["prognosis"] = built_in


def test_model_grows_only_through_add_task():
    model = MedCLModel({"model_name": "medcl-vit-tiny"}, {"classification": {"learn_class_embeddings": True}})
    model.add_task(spec(3, name="a"))
    model.add_task(spec(5, name="b"))
    assert model.tasks == ["a", "b"]
    assert model(torch.rand(2, 3, 28, 28), task="b").shape == (2, 5)
    with pytest.raises(ValueError, match="task 'a' already exists"):
        model.add_task(spec(3, name="a"))
    with pytest.raises(KeyError, match="no head for task 'c'"):
        model(torch.rand(1, 3, 28, 28), task="c")
    with pytest.raises(ValueError, match="head_args\\['classification'\\] expected a mapping"):
        MedCLModel({"model_name": "medcl-vit-tiny"}, {"classification": 3})
