"""Modality adapters: per-modality LoRA (peft), patch embeddings for new channel counts, routing,
checkpoint rebuilds, freezing policies and optimizer parameter groups."""
import pytest
import torch
from torch import nn

from framework.adapters import AdapterSpec, RoutedPatchEmbedding, check_lora_options
from framework.adapters.lora import lora_layers
from framework.adapters.patch_embedding import init_from_rgb
from framework.model import MedCLModel
from framework.strategies.freezing_policy import FREEZE_POLICIES, FreezingPolicy
from framework.core.specs import TaskSpec

ARCHS = ["medcl-vit-tiny", "medcl-resnet18-tiny"]
VIT, RESNET = ARCHS
SIZE = 32
LORA = {"r": 4}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These tensors are tiny: one intra-op thread is many times faster than two contending ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def cls_task(name, modality, channels=1):
    return TaskSpec(name=name, kind="classification", modality=modality, class_names=("a", "b", "c"), in_channels=channels)


def seg_task(name="seg", modality="pet_ct", channels=2):
    return TaskSpec(name=name, kind="segmentation", modality=modality, label_names=("lesion",), in_channels=channels)


def make_model(arch, lora=LORA, seed=0, **backbone):
    torch.manual_seed(seed)
    model = MedCLModel({"model_name": arch, "image_size": SIZE, **backbone}, lora=lora)
    if arch == RESNET:
        # timm zero-initialises the last BatchNorm gamma of every residual block, which would make
        # LoRA on the block convolutions invisible in the output of a fresh tower
        for module in model.backbone.clip.visual.modules():
            if isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
    return model.eval()


def images(channels=1, seed=0, n=2):
    return torch.rand(n, channels, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def perturb_lora(model, modality, std=0.5, seed=1):
    """Random LoRA ``B`` of one modality (``B`` starts at zero), so the adapter changes the tower."""
    g = torch.Generator().manual_seed(seed)
    hit = 0
    with torch.no_grad():
        for name, p in model.named_parameters():
            if f".lora_B.{modality}." in name:
                p.copy_(torch.randn(p.shape, generator=g) * std)
                hit += 1
    assert hit > 0, f"no LoRA B weights of modality {modality!r}"


def routers(model):
    return [m for m in model.backbone.clip.visual.modules() if isinstance(m, RoutedPatchEmbedding)]


def base_visual(model):
    """(name, parameter) of the image tower without its adapters."""
    adapter_ids = {id(p) for p in model.adapters.all_parameters()}
    return [(n, p) for n, p in model.backbone.clip.visual.named_parameters() if id(p) not in adapter_ids]


def text_side(model):
    """Parameters outside the image tower (text tower, CLIP logit scale): locked by default."""
    return [p for n, p in model.backbone.named_parameters() if not n.startswith("clip.visual.")]


# ---------------------------------------------------------------- LoRA injection
@pytest.mark.parametrize("arch", ARCHS)
def test_lora_leaves_outputs_unchanged_at_init(arch):
    model = make_model(arch)
    x = images()
    before = model.backbone.encode_image(x)
    model.add_task(cls_task("ct_task", "ct"))
    assert model.adapter_of_task["ct_task"] == AdapterSpec("ct", 3, "first", lora=check_lora_options(LORA, "t"))
    assert len(lora_layers(model.backbone.clip.visual)) > 0
    with model.adapters.use("ct"):
        after = model.backbone.encode_image(x)
    assert torch.allclose(before, after, atol=1e-6)
    # ...and the comparison can fail: a non-zero B changes the routed tower
    perturb_lora(model, "ct")
    with model.adapters.use("ct"):
        assert not torch.allclose(before, model.backbone.encode_image(x), atol=1e-3)


@pytest.mark.parametrize("arch", ARCHS)
def test_injection_does_not_freeze_the_tower(arch):
    model = make_model(arch)
    model.add_task(cls_task("ct_task", "ct"))
    base = base_visual(model)
    assert base and all(p.requires_grad for _, p in base), [n for n, p in base if not p.requires_grad]
    ct = model.adapters.parameters("ct")
    assert ct and all(p.requires_grad for p in ct)
    assert not any(p.requires_grad for p in text_side(model))

    # a second injection keeps every flag as the freezing policy left it (peft would flip them)
    for p in ct:
        p.requires_grad_(False)
    name, frozen = next((n, p) for n, p in base if "attn" not in n)
    frozen.requires_grad_(False)
    model.add_task(cls_task("xray_task", "xray"))
    assert all(not p.requires_grad for p in model.adapters.parameters("ct"))
    assert not dict(model.backbone.clip.visual.named_parameters())[name].requires_grad
    xray = model.adapters.parameters("xray")
    assert xray and all(p.requires_grad for p in xray)
    assert {id(p) for p in xray}.isdisjoint(id(p) for p in ct)
    assert all(p.requires_grad for n, p in base_visual(model) if n != name)


@pytest.mark.parametrize("arch", ARCHS)
def test_routing_keeps_every_requires_grad_flag(arch):
    """peft's set_adapter/enable_adapters flip adapters' requires_grad: routing puts them back."""
    model = make_model(arch)
    model.add_task(cls_task("ct_task", "ct"))
    model.add_task(cls_task("xray_task", "xray"))
    for p in model.adapters.parameters("xray"):
        p.requires_grad_(False)  # as the freezing policy leaves an old modality's adapter
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    loss = model(images(), "ct_task").sum() + model(images(), "xray_task").sum()
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    loss.backward()
    assert all(p.grad is not None for p in model.adapters.parameters("ct")[-2:])  # LoRA B of the routed modality trains
    assert all(p.grad is None for p in model.adapters.parameters("xray"))


# ---------------------------------------------------------------- routing
@pytest.mark.parametrize("arch", ARCHS)
def test_forward_routes_to_the_task_modality(arch):
    model = make_model(arch)
    model.add_task(cls_task("ct_task", "ct"))
    model.add_task(cls_task("xray_task", "xray"))
    model.eval()
    assert sorted(model.adapters.specs) == ["ct", "xray"]
    assert model.adapters.modalities == ["ct", "xray"]
    x = images()
    ct0, xray0 = model(x, "ct_task"), model(x, "xray_task")
    plain0 = model.backbone.encode_image(x)
    assert ct0.shape == xray0.shape == (2, 3)

    perturb_lora(model, "xray")
    xray1 = model(x, "xray_task")
    assert not torch.allclose(xray0, xray1, atol=1e-3)
    assert torch.allclose(model(x, "ct_task"), ct0, atol=1e-6)
    # the xray forward left no routing behind: ct and the unrouted tower are as before
    model(x, "xray_task")
    assert torch.allclose(model(x, "ct_task"), ct0, atol=1e-6)
    assert torch.allclose(model.backbone.encode_image(x), plain0, atol=1e-6)
    assert all(layer.disable_adapters and not layer.active_adapters for layer in lora_layers(model.backbone.clip.visual))

    # a later task of an adapted modality shares that modality's adapter
    model.add_task(cls_task("ct_task2", "ct"))
    model.eval()
    assert "ct_task2" not in model.adapter_of_task and sorted(model.adapters.specs) == ["ct", "xray"]
    shared0 = model(x, "ct_task2")
    perturb_lora(model, "ct", seed=2)
    assert not torch.allclose(model(x, "ct_task2"), shared0, atol=1e-3)
    assert torch.allclose(model(x, "xray_task"), xray1, atol=1e-6)


# ---------------------------------------------------------------- patch embeddings
@pytest.mark.parametrize("arch", ARCHS)
def test_two_channel_modality_gets_its_own_patch_embedding(arch):
    model = make_model(arch, lora=None)
    assert routers(model) == []
    head = model.add_task(seg_task())
    model.eval()
    assert model.adapter_of_task["seg"] == AdapterSpec("pet_ct", in_channels=2, channel_init="first", lora=None)
    assert model.adapters.in_channels("pet_ct") == 2
    (router,) = routers(model)
    own = router.per_modality["pet_ct"]
    assert own.in_channels == 2 and router.base.in_channels == 3
    assert model.adapters.parameters("pet_ct") == list(own.parameters())
    # "first": the grayscale filter (sum of the RGB filters) on channel 0, zeros on channel 1
    assert torch.equal(own.weight[:, 1], torch.zeros_like(own.weight[:, 1]))
    assert torch.allclose(own.weight[:, 0], router.base.weight.sum(dim=1), atol=1e-6)
    assert own.weight.shape[0] == router.base.out_channels and own.stride == router.base.stride

    x2 = images(2)
    logits = model(x2, "seg")
    assert logits.shape == (2, 2, SIZE, SIZE)
    head.loss(logits, torch.randint(0, 2, (2, SIZE, SIZE))).backward()
    assert own.weight.grad is not None and own.weight.grad.abs().sum() > 0
    assert router.base.weight.grad is None  # the RGB convolution was not on the route
    assert model.backbone.extra_channels is None and router.active is None

    # another task of the modality reuses the embedding; other modalities keep 1/3 channels
    model.add_task(cls_task("pet_cls", "pet_ct", channels=2))
    model.add_task(cls_task("ct_cls", "ct", channels=1))
    model.eval()
    assert "pet_cls" not in model.adapter_of_task and "ct_cls" not in model.adapter_of_task
    assert model(x2, "pet_cls").shape == (2, 3)
    assert model(images(1), "ct_cls").shape == (2, 3)
    with pytest.raises(ValueError, match="channels"):
        model(x2, "ct_cls")
    with pytest.raises(ValueError, match="expects 2 channels, found 1"):
        model(images(1), "seg")
    # a failing forward still resets the routing
    assert model.backbone.extra_channels is None and router.active is None


@pytest.mark.parametrize("mode", ["first", "mean"])
@pytest.mark.parametrize("channels", [2, 4])
def test_init_from_rgb(mode, channels):
    torch.manual_seed(0)
    base = nn.Conv2d(3, 8, kernel_size=4, stride=4, bias=True)
    conv = init_from_rgb(base, channels, mode)
    assert conv.weight.shape == (8, channels, 4, 4) and conv.stride == (4, 4)
    assert torch.equal(conv.bias, base.bias)
    gray = base.weight.sum(dim=1)
    if mode == "first":
        assert torch.allclose(conv.weight[:, 0], gray)
        assert not conv.weight[:, 1:].any()
    else:
        for c in range(channels):
            assert torch.allclose(conv.weight[:, c], gray / channels, atol=1e-7)
        # equal channels reproduce the grayscale response
        x = torch.rand(1, 1, 8, 8)
        ref = nn.functional.conv2d(x, gray[:, None], base.bias, stride=4)
        assert torch.allclose(conv(x.expand(-1, channels, -1, -1)), ref, atol=1e-5)


# ---------------------------------------------------------------- checkpoint-style rebuild
@pytest.mark.parametrize("arch", ARCHS)
def test_rebuild_from_adapter_specs_loads_strictly(arch):
    a = make_model(arch, seed=0)
    a.add_task(cls_task("ct_task", "ct"))
    a.add_task(seg_task())
    assert set(a.adapter_of_task) == {"ct_task", "seg"}
    perturb_lora(a, "ct", seed=1)
    perturb_lora(a, "pet_ct", seed=2)
    with torch.no_grad():
        routers(a)[0].per_modality["pet_ct"].weight[:, 1].normal_(0, 0.1)
    a.eval()
    x1, x2 = images(1), images(2)
    expected = {"ct_task": a(x1, "ct_task"), "seg": a(x2, "seg")}

    b = make_model(arch, lora=None, seed=1)
    for name, spec in a.specs.items():
        stored = a.adapter_of_task.get(name)
        b.add_task(spec, adapter=AdapterSpec.from_dict(stored.to_dict(), "ckpt") if stored else None)
    b.eval()
    assert b.adapter_of_task == a.adapter_of_task
    assert not torch.allclose(b(x1, "ct_task"), expected["ct_task"], atol=1e-3)  # different init before loading
    b.load_state_dict(a.state_dict(), strict=True)
    b.eval()
    assert torch.allclose(b(x1, "ct_task"), expected["ct_task"], atol=1e-5)
    assert torch.allclose(b(x2, "seg"), expected["seg"], atol=1e-5)

    # without the adapters the checkpoint does not fit
    c = make_model(arch, lora=None, seed=1)
    c.add_task(a.specs["ct_task"], adapter=None)
    with pytest.raises(ValueError, match="own modality name"):
        c.add_task(a.specs["seg"], adapter=None)  # 2 channels need the patch embedding
    c.add_task(a.specs["seg"], adapter=a.adapter_of_task["seg"])
    with pytest.raises(RuntimeError, match="lora_"):
        c.load_state_dict(a.state_dict(), strict=True)


# ---------------------------------------------------------------- errors
def test_adapter_errors_name_the_problem():
    model = make_model(VIT)
    model.add_task(cls_task("ct_task", "ct"))
    with pytest.raises(KeyError) as err:
        with model.adapters.use("mri"):
            pass
    assert "'mri'" in err.value.args[0] and "['ct']" in err.value.args[0]
    with pytest.raises(KeyError, match="mri"):
        model.adapters.parameters("mri")

    plain = make_model(VIT, lora=None)
    plain.add_task(cls_task("ct_task", "ct"))
    assert "ct" not in plain.adapters and plain.adapter_of_task == {}
    with pytest.raises(KeyError) as err:
        plain.adapters.parameters("ct")
    assert "'ct' has no adapter" in err.value.args[0]
    with plain.adapters.use("ct"):  # a known modality without adapters runs the tower as it is
        pass

    # channel counts are per modality
    with pytest.raises(ValueError, match="own modality name"):
        model.add_task(cls_task("ct2", "ct", channels=2))
    model.add_task(seg_task())
    with pytest.raises(ValueError, match="patch embedding for 2 channels.*own modality name"):
        model.add_task(cls_task("pet1", "pet_ct", channels=1))
    # explicit adapters must fit the task and cannot be added twice
    with pytest.raises(ValueError, match="AdapterSpec for modality 'xray'"):
        model.add_task(cls_task("x", "xray"), adapter=AdapterSpec("ct", lora=LORA))
    with pytest.raises(ValueError, match="already has adapters"):
        model.add_task(cls_task("ct3", "ct"), adapter=AdapterSpec("ct", lora=LORA))
    assert model.tasks == ["ct_task", "seg"]  # failed additions left no head behind


@pytest.mark.parametrize("kwargs, match", [
    (dict(modality="x", in_channels=3, lora=None), "needs LoRA options or in_channels"),
    (dict(modality="x", in_channels=1, lora=None), "needs LoRA options or in_channels"),
    (dict(modality="", in_channels=2), "'modality'"),
    (dict(modality="x", in_channels=0), "'in_channels'"),
    (dict(modality="x", in_channels=2, channel_init="last"), "'channel_init'"),
    (dict(modality="x", lora={"r": 0}), "lora.r"),
])
def test_adapter_spec_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AdapterSpec(**kwargs)


@pytest.mark.parametrize("options, match", [
    ({"rank": 4}, r"unknown option\(s\) \['rank'\]"),
    ({"r": 0}, "lora.r expected a positive integer, found 0"),
    ({"r": True}, "lora.r"),
    ({"alpha": -1}, "lora.alpha"),
    ({"dropout": 1.5}, r"lora.dropout expected a number in \[0, 1\), found 1.5"),
    ({"target_modules": []}, "lora.target_modules"),
    ([4], "expected null or a mapping"),
])
def test_lora_option_validation(options, match):
    with pytest.raises(ValueError, match=match):
        check_lora_options(options, "owner")


def test_lora_option_defaults_and_model_validation():
    assert check_lora_options(None, "o") is None
    assert check_lora_options({"r": 2, "target_modules": ("a", "b"), "dropout": 0}, "o") == {
        "r": 2, "alpha": 16, "dropout": 0.0, "target_modules": ["a", "b"]}
    with pytest.raises(ValueError, match=r"MedCLModel: lora has unknown option\(s\) \['rank'\]"):
        MedCLModel({"model_name": VIT, "image_size": SIZE}, lora={"rank": 4})
    spec = AdapterSpec("pet_ct", 2, "mean", {"r": 2})
    assert AdapterSpec.from_dict(spec.to_dict(), "ckpt") == spec
    with pytest.raises(ValueError, match="ckpt"):
        AdapterSpec.from_dict({**spec.to_dict(), "extra": 1}, "ckpt")


# ---------------------------------------------------------------- freezing policies
#: trainable after apply: base image tower, ct adapter (old task), xray adapter (current), old head, new head
EXPECTED = {
    "none": (True, True, True, True, True),
    "backbone": (False, True, True, True, True),
    "old_heads": (True, True, True, False, True),
    "backbone+old_heads": (False, False, True, False, True),  # the ct adapter serves the old task
    "adapters_only": (False, False, True, False, True),
}


@pytest.mark.parametrize("policy, shared_adapter_trains", [("backbone+old_heads", False), ("adapters_only", True), ("backbone", True)])
def test_an_adapter_shared_with_old_tasks_trains_only_where_the_policy_allows_it(policy, shared_adapter_trains):
    """A new task of a modality an old task already uses: backbone+old_heads keeps the old task exact."""
    model = make_model(VIT)
    model.add_task(cls_task("old", "ct"))
    model.add_task(cls_task("new_ct", "ct"))
    assert set(model.adapter_of_task) == {"old"}  # the second ct task shares the ct adapter
    counts = FreezingPolicy(policy).apply([model], ["new_ct"])
    assert all(p.requires_grad == shared_adapter_trains for p in model.adapters.parameters("ct"))
    assert (counts["adapters"] > 0) == shared_adapter_trains


def grown_vit():
    model = make_model(VIT)
    model.add_task(cls_task("old", "ct"))
    model.add_task(cls_task("new", "xray"))
    assert set(model.adapter_of_task) == {"old", "new"}
    return model


@pytest.mark.parametrize("policy", FREEZE_POLICIES)
def test_freezing_policy_groups(policy):
    assert set(EXPECTED) == set(FREEZE_POLICIES)
    model = grown_vit()
    freezer = FreezingPolicy(policy)
    counts = freezer.apply([model], ["new"])

    base = [p for _, p in base_visual(model)]
    groups = {
        "base": base,
        "ct": model.adapters.parameters("ct"),
        "xray": model.adapters.parameters("xray"),
        "old": list(model.heads["old"].parameters()),
        "new": list(model.heads["new"].parameters()),
    }
    for (group, params), trainable in zip(groups.items(), EXPECTED[policy]):
        assert params, group
        assert all(p.requires_grad == trainable for p in params), (policy, group, trainable)
    assert not any(p.requires_grad for p in text_side(model))  # locked text tower stays locked

    numel = lambda ps: sum(p.numel() for p in ps)  # noqa: E731
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert counts["total"] == numel(trainable) > 0
    assert counts["all"] == numel(model.parameters())
    assert counts["backbone"] == (numel(base) if EXPECTED[policy][0] else 0)
    assert counts["adapters"] == numel(p for g in ("ct", "xray") for p in groups[g] if p.requires_grad)
    assert counts["heads"] == numel(p for p in groups["old"] + groups["new"] if p.requires_grad)

    # froze(): what the policy froze, never what the model's configuration locked
    for (group, params), trainable in zip(groups.items(), EXPECTED[policy]):
        assert all(freezer.froze(p) == (not trainable) for p in params), (policy, group)
    assert not any(freezer.froze(p) for p in text_side(model))

    model.train()
    freezer.set_eval()
    assert model.heads["new"].training
    assert model.heads["old"].training == EXPECTED[policy][3]
    assert model.backbone.clip.visual.training == EXPECTED[policy][0]


def test_unknown_freezing_policy():
    with pytest.raises(ValueError, match=r"freeze expected one of \['none', 'backbone', 'old_heads'.*found 'heads'"):
        FreezingPolicy("heads")


def test_policy_reapplied_for_a_later_experience_unfreezes_the_new_current_task():
    model = grown_vit()
    freezer = FreezingPolicy("adapters_only")
    freezer.apply([model], ["old"])
    assert all(p.requires_grad for p in model.adapters.parameters("ct"))
    assert not any(p.requires_grad for p in model.adapters.parameters("xray"))
    assert not any(p.requires_grad for p in model.heads["new"].parameters())
    freezer.apply([model], ["new"])
    assert not any(p.requires_grad for p in model.adapters.parameters("ct"))
    assert all(p.requires_grad for p in model.adapters.parameters("xray"))
    assert all(p.requires_grad for p in model.heads["new"].parameters())
    assert not any(p.requires_grad for p in text_side(model))


# ---------------------------------------------------------------- optimizer parameter groups
@pytest.mark.parametrize("trainable_only", [False, True])
@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_groups(arch, trainable_only):
    model = make_model(arch)
    model.add_task(cls_task("old", "ct"))
    model.add_task(cls_task("new", "xray"))
    model.add_task(cls_task("new2", "xray"))  # shares xray's adapter: no adapter group of its own
    if trainable_only:
        FreezingPolicy("adapters_only").apply([model], ["new"])
    select = (lambda m: [p for p in m.parameters() if p.requires_grad]) if trainable_only else (lambda m: list(m.parameters()))
    groups = model.parameter_groups(select)
    assert [name for name, _ in groups] == ["backbone", "adapter:ct", "head:old", "adapter:xray", "head:new", "head:new2"]
    keys = [id(p) for _, params in groups for p in params]
    assert len(keys) == len(set(keys)), "a parameter is in two groups"
    wanted = select(model.backbone) + [p for head in model.heads.values() for p in select(head)]
    assert set(keys) == {id(p) for p in wanted}
    named = dict(groups)
    assert {id(p) for p in named["head:old"]} == {id(p) for p in select(model.heads["old"])}
    adapter_keys = {id(p) for p in model.adapters.all_parameters()}
    assert not adapter_keys & {id(p) for p in named["backbone"]}
    if trainable_only:
        assert named["backbone"] == [] and named["adapter:ct"] == [] and named["head:old"] == []
        assert named["adapter:xray"] and named["head:new"] and named["head:new2"] == []
    else:
        assert {id(p) for p in named["adapter:ct"]} == {id(p) for p in model.adapters.parameters("ct")}
        assert len(named["backbone"]) == len(list(model.backbone.parameters())) - len(adapter_keys)


# ---------------------------------------------------------------- parameter identity
# peft's LoRA for nn.MultiheadAttention merges into the base weights on every forward and swaps
# them for new Parameter objects (stale optimizer references, requires_grad reset, id-keyed
# freezing bookkeeping broken, round-off drift), so attention is not a LoRA target.


def test_lora_on_multihead_attention_is_refused():
    model = make_model(VIT, lora={"r": 4, "target_modules": ["attn", "c_fc"]})
    with pytest.raises(ValueError, match="MultiheadAttention"):
        model.add_task(cls_task("ct_task", "ct"))


@pytest.mark.parametrize("arch", ARCHS)
def test_base_parameters_are_stable_objects(arch):
    model = make_model(arch)
    model.add_task(cls_task("ct_task", "ct"))
    first, second = dict(model.named_parameters()), dict(model.named_parameters())
    assert [n for n in first if first[n] is not second[n]] == []


@pytest.mark.parametrize("arch", ARCHS)
def test_lora_forward_keeps_the_tower_trainable(arch):
    model = make_model(arch)
    model.add_task(cls_task("ct_task", "ct"))
    perturb_lora(model, "ct")
    optimizer_params = dict(base_visual(model))  # what an optimizer built now would hold
    before = {n: p.detach().clone() for n, p in optimizer_params.items()}
    model.train()
    model(images(), "ct_task").logsumexp(-1).sum().backward()
    after = dict(base_visual(model))
    assert [n for n, p in after.items() if not p.requires_grad] == []
    assert [n for n, p in optimizer_params.items() if p.grad is None] == []
    assert [n for n, p in after.items() if not torch.equal(p.detach(), before[n])] == []  # no merge/unmerge drift


@pytest.mark.parametrize("arch", ARCHS)
def test_adding_lora_keeps_a_locked_tower_locked(arch):
    model = make_model(arch, freeze_image_tower=True)
    trainable = {n for n, p in model.backbone.clip.visual.named_parameters() if p.requires_grad}
    model.add_task(cls_task("ct_task", "ct"))
    # peft moves a targeted module's weights under ".base_layer"
    assert {n.replace(".base_layer", "") for n, p in base_visual(model) if p.requires_grad} == trainable
    assert all(p.requires_grad for p in model.adapters.parameters("ct"))
