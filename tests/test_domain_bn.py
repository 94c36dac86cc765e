"""Per-domain BatchNorm (DSBN): each task normalises with its own BatchNorm copies, routed by the task,
stored in checkpoints, frozen and trained with its head."""
from __future__ import annotations

import pytest
import torch
from torch.nn.modules.batchnorm import _BatchNorm

from framework.adapters.domain_bn import DomainBatchNorm
from framework.model import MedCLModel
from framework.strategies.freezing_policy import FreezingPolicy
from framework.core.specs import TaskSpec

A = TaskSpec(name="blood", kind="classification", class_names=("a", "b"), modality="microscopy", image_size=(28, 28))
B = TaskSpec(name="organ", kind="classification", class_names=("c", "d"), modality="ct", image_size=(28, 28))


def _model(**kwargs) -> MedCLModel:
    torch.manual_seed(0)
    model = MedCLModel(backbone={"model_name": "medcl-resnet18-tiny"}, domain_batchnorm=True, **kwargs)
    model.add_task(A)
    model.add_task(B)
    return model


def _stats(model: MedCLModel, domain=None):
    layers = [m for m in model.image_tower.modules() if isinstance(m, DomainBatchNorm)]
    return [(l.shared if domain is None else l.domains[domain]).running_mean.clone() for l in layers]


def test_each_task_updates_only_its_own_batchnorm_statistics():
    model = _model()
    model.train()
    shared, organ = _stats(model), _stats(model, "organ")
    model(torch.rand(4, 3, 28, 28), "blood")
    assert all(not torch.equal(a, b) for a, b in zip(_stats(model, "blood"), shared))
    assert all(torch.equal(a, b) for a, b in zip(_stats(model), shared))
    assert all(torch.equal(a, b) for a, b in zip(_stats(model, "organ"), organ))


def test_every_batchnorm_layer_of_the_tower_is_per_domain_and_nothing_else():
    model = _model()
    wrapped = [m for m in model.image_tower.modules() if isinstance(m, DomainBatchNorm)]
    plain = [m for m in model.image_tower.modules() if isinstance(m, _BatchNorm)]
    assert wrapped and len(plain) == 3 * len(wrapped)  # the shared layer and two copies each
    assert all(set(m.domains) == {"blood", "organ"} for m in wrapped)


def test_the_copies_are_in_the_state_dict_and_a_rebuilt_model_loads_them_strictly():
    model = _model()
    model.train()
    model(torch.rand(4, 3, 28, 28), "organ")
    state = model.state_dict()
    assert any(".domains.organ.running_mean" in k for k in state)
    rebuilt = _model()
    rebuilt.load_state_dict(state, strict=True)
    model.eval(), rebuilt.eval()
    images = torch.rand(2, 3, 28, 28)
    assert torch.equal(model(images, "organ"), rebuilt(images, "organ"))


def test_the_copies_have_their_own_parameter_group_and_follow_their_head_when_frozen():
    model = _model()
    groups = dict(model.parameter_groups(lambda m: list(m.parameters())))
    assert groups["batchnorm:blood"] and groups["batchnorm:organ"]
    assert not {id(p) for p in groups["batchnorm:blood"]} & {id(p) for p in groups["backbone"]}
    policy = FreezingPolicy("backbone+old_heads")
    policy.apply([model], current_tasks=["organ"])
    model.train()
    policy.set_eval()
    assert all(p.requires_grad for p in groups["batchnorm:organ"]) and not any(p.requires_grad for p in groups["batchnorm:blood"])
    assert not any(p.requires_grad for p in groups["backbone"])
    norms = model.domain_norms
    assert all(m.training for m in norms.modules("organ")) and not any(m.training for m in norms.modules("blood"))


def test_a_tower_without_batchnorm_is_refused():
    with pytest.raises(ValueError, match="has no BatchNorm layer; per-domain normalisation is for BatchNorm towers"):
        MedCLModel(backbone={"model_name": "medcl-vit-tiny"}, domain_batchnorm=True)
