import pytest

from framework.core.specs import TASK_KINDS, TaskSpec


def blood(**kw):
    args = dict(name="blood", kind="classification", modality="microscopy", class_names=["a", "b"], prompt_template="an image of {}")
    args.update(kw)
    return TaskSpec(**args)


def test_valid_spec_derives_prompts_and_class_count():
    spec = blood(class_names=["basophil", "immature_granulocyte"])
    assert spec.num_classes == 2
    assert spec.prompts == ("an image of basophil", "an image of immature granulocyte")
    assert isinstance(spec.class_names, tuple)


@pytest.mark.parametrize(
    "field, value, fragment",
    [
        ("name", "", "field 'name'"),
        ("name", "1abc", "field 'name'"),
        ("name", "has space", "field 'name'"),
        ("kind", "regression", "field 'kind'"),
        ("class_names", ["only"], "field 'class_names'"),
        ("class_names", ["a", "a"], "duplicates"),
        ("prompt_template", "no placeholder", "field 'prompt_template'"),
        ("prompt_template", "{} and {}", "field 'prompt_template'"),
        ("in_channels", 0, "field 'in_channels'"),
        ("in_channels", True, "field 'in_channels'"),
        ("spatial_dims", 4, "field 'spatial_dims'"),
        ("modality", "", "field 'modality'"),
    ],
)
def test_invalid_fields_are_named(field, value, fragment):
    with pytest.raises(ValueError, match=fragment) as info:
        blood(**{field: value})
    assert "expected" in str(info.value) or "duplicates" in str(info.value)


def test_segmentation_needs_label_names():
    with pytest.raises(ValueError, match="label_names"):
        TaskSpec(name="polyp", kind="segmentation")
    spec = TaskSpec(name="polyp", kind="segmentation", label_names=["polyp"])
    assert spec.num_classes == 2


@pytest.mark.parametrize("kind", TASK_KINDS)
def test_every_kind_is_a_valid_spec_kind(kind):
    extra = {"label_names": ["x"]} if kind == "segmentation" else {"class_names": ["x", "y"]}
    assert TaskSpec(name="t", kind=kind, **extra).kind == kind


def test_round_trip_through_dict():
    spec = blood()
    again = TaskSpec.from_dict(spec.to_dict())
    assert again == spec
    assert isinstance(spec.to_dict()["class_names"], list)


def test_from_dict_names_source_and_unknown_fields():
    with pytest.raises(ValueError, match=r"in ckpt.pt: unknown field\(s\) \['colour'\]"):
        TaskSpec.from_dict({"name": "a", "kind": "classification", "colour": 1}, source="ckpt.pt")
    with pytest.raises(ValueError, match=r"missing required field\(s\) \['kind'\]"):
        TaskSpec.from_dict({"name": "a"})
    with pytest.raises(ValueError, match="field 'class_names'.*in ckpt.pt"):
        TaskSpec.from_dict({"name": "a", "kind": "classification", "class_names": ["x"]}, source="ckpt.pt")
