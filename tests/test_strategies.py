"""The strategy API: hook order, strategies combined as class_paths, DER++, L2P and the token hook."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
import yaml

from framework.backbone.tokens import TokenHook
from framework.cli import run_cli
from framework.strategies import DER, L2P, Strategy, register_strategy
from helpers import shrink_config

SHRINK = dict(train_subset=48, eval_subset=40, batch_size=16, train_batches=2)


class Recorder(Strategy):
    """Records every hook call; adds a constant loss term."""

    calls: list = []

    def before_experience(self, trainer, module, experience, tasks):
        Recorder.calls.append(("before_experience", experience, tuple(tasks)))

    def before_forward(self, trainer, module, batch):
        Recorder.calls.append(("before_forward", tuple(batch)))
        return batch

    def after_forward(self, trainer, module, batch, outputs):
        assert set(outputs) == set(batch) and all(outputs[t].requires_grad for t in outputs)
        Recorder.calls.append(("after_forward", tuple(outputs)))

    def loss_terms(self, trainer, module, batch, outputs):
        Recorder.calls.append(("loss_terms",))
        return {"recorder": torch.tensor(0.25, device=module.device)}

    def after_backward(self, trainer, module):
        grads = [p.grad for p in module.parameters() if p.requires_grad and p.grad is not None]
        Recorder.calls.append(("after_backward", len(grads) > 0))

    def after_experience(self, trainer, module, experience, tasks):
        Recorder.calls.append(("after_experience", experience, tuple(tasks)))


def _config(path: str, tmp_path: Path, callbacks=None, model=None, last=False) -> Path:
    config = shrink_config(path, tmp_path, **SHRINK)
    data = yaml.safe_load(config.read_text())
    if callbacks is not None:
        data["trainer"]["callbacks"] = data["trainer"]["callbacks"] + callbacks if last else callbacks + data["trainer"]["callbacks"]
    data["model"]["init_args"].update(model or {})
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    return config


def _logged(tmp_path: Path) -> set:
    (metrics,) = list(tmp_path.rglob("metrics.csv"))
    with open(metrics) as fh:
        return {k for row in csv.DictReader(fh) for k, v in row.items() if v}


@pytest.mark.slow
def test_hooks_are_called_in_order_around_steps_and_experiences(tmp_path):
    Recorder.calls = []
    config = _config("experiments/quickstart.yaml", tmp_path, callbacks=[{"class_path": "test_strategies.Recorder"}], last=True)
    run_cli(["fit", "--config", str(config)])
    calls = Recorder.calls
    step = ["before_forward", "after_forward", "loss_terms", "after_backward"]
    names = [c[0] for c in calls]
    assert names == ["before_experience", *step * 2, "after_experience", "before_experience", *step * 2, "after_experience"], names
    assert calls[0] == ("before_experience", 0, ("bloodmnist",)) and calls[-1] == ("after_experience", 1, ("organamnist",))
    assert ("before_forward", ("organamnist", "bloodmnist")) in calls  # the quickstart's replay ran first and added Blood
    assert all(c[1] for c in calls if c[0] == "after_backward")  # gradients are there
    assert {"train/recorder", "train/regularization"} <= _logged(tmp_path)


@pytest.mark.slow
def test_strategies_combine_as_a_list_of_class_paths(tmp_path):
    callbacks = [
        {"class_path": "framework.strategies.EWC", "init_args": {"weight": 10.0, "fisher_batches": 2}},
        {"class_path": "framework.strategies.LwF", "init_args": {"weight": 1.0}},
    ]
    config = _config("experiments/quickstart.yaml", tmp_path, callbacks=callbacks)
    cli = run_cli(["fit", "--config", str(config)])
    assert {"train/ewc", "train/lwf", "train/regularization"} <= _logged(tmp_path)
    names = [type(c).__name__ for c in cli.trainer.callbacks if isinstance(c, Strategy)]
    assert names == ["EWC", "LwF", "Replay"]
    (ckpt,) = [p for p in tmp_path.rglob("last.ckpt")]
    stored = torch.load(ckpt, weights_only=True, map_location="cpu")["callbacks"]
    assert {"EWC", "LwF", "ReplayCallback"} <= set(stored) and stored["LwF"]["teacher"]["tasks"][0]["name"] == "bloodmnist"


def test_two_strategies_with_one_loss_term_name_are_refused():
    from framework.strategies.runner import StrategyRunner

    class Same(Strategy):
        def loss_terms(self, trainer, module, batch, outputs):
            return {"same": torch.tensor(1.0)}

    module = type("M", (), {"own_strategies": [Same(), Same()], "_trainer": None, "trainer": None})()
    with pytest.raises(ValueError, match="loss term 'same' returned by two strategies"):
        StrategyRunner(module).loss_terms({}, {})


def test_register_strategy_names_it_and_refuses_other_classes():
    from framework.core.registry import STRATEGIES

    @register_strategy("recorder_for_test")
    class Named(Strategy):
        pass

    try:
        assert Named.name == "recorder_for_test" and STRATEGIES.get("recorder_for_test") is Named
        assert STRATEGIES.get("framework.strategies.DER") is DER  # a class_path works too
        with pytest.raises(ValueError, match="expected a subclass of framework.strategies.base.Strategy"):
            register_strategy("not_a_strategy")(object)
    finally:
        STRATEGIES.unregister("recorder_for_test")


# ---------------------------------------------------------------------- DER++
@pytest.mark.slow
def test_der_stores_logits_and_adds_both_terms(tmp_path):
    from framework.sharing import strip_exemplars

    config = _config("experiments/strategies/der.yaml", tmp_path)
    cli = run_cli(["fit", "--config", str(config)])
    der = next(c for c in cli.trainer.callbacks if isinstance(c, DER))
    assert set(der.buffer.tasks()) == {"bloodmnist", "organamnist", "pneumoniamnist", "retinamnist"}
    for task, classes in (("bloodmnist", 8), ("retinamnist", 5)):
        fields = der.buffer.task_fields(task)
        assert list(fields) == ["image", "target", "logits"] and fields["logits"].shape[1:] == (classes,)
        assert fields["logits"].dtype == torch.float32 and torch.isfinite(fields["logits"]).all()
    assert {"train/der_logits", "train/der_replay"} <= _logged(tmp_path)
    (ckpt,) = list(tmp_path.rglob("last.ckpt"))
    state = torch.load(ckpt, weights_only=True, map_location="cpu")["callbacks"]["DER"]
    assert "logits" in state["ranks"][0]["tasks"]["bloodmnist"]
    result = strip_exemplars(ckpt, tmp_path / "shared.ckpt")  # medcl-share removes DER's exemplars too
    shared = torch.load(tmp_path / "shared.ckpt", weights_only=True, map_location="cpu")["callbacks"]["DER"]
    assert shared["stripped"] and result["removed_samples"] == len(der.buffer)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [({"alpha": -1.0}, "DER: alpha expected a finite number >= 0"), ({"beta": "x"}, "DER: beta expected"), ({"policy": "herding"}, "without the logits DER needs")],
)
def test_der_refuses_bad_options(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        DER(**kwargs)


# ---------------------------------------------------------------------- tokens and L2P
def _tower():
    from framework.model import MedCLModel

    return MedCLModel({"model_name": "medcl-vit-tiny"}).image_tower.eval()


def test_token_hook_sees_the_sequence_and_restores_its_length():
    tower = _tower()
    images = torch.rand(2, 3, 28, 28)
    with torch.no_grad():
        plain = tower(images)
    seen = []

    def add_three(tokens):
        seen.append(tuple(tokens.shape))
        return torch.cat([tokens[:, :1], torch.ones(tokens.shape[0], 3, tokens.shape[2]), tokens[:, 1:]], dim=1)

    hook = TokenHook(tower, add_three)
    with torch.no_grad():
        prompted = tower(images)
    assert seen == [(2, 1 + 49, 128)] and prompted.shape == plain.shape and not torch.allclose(prompted, plain)
    hook.remove()
    with torch.no_grad():
        assert torch.equal(tower(images), plain)
    TokenHook(tower, lambda tokens: tokens[:, :1])
    with pytest.raises(ValueError, match=r"token hook: expected a sequence \(B, >= 50, 128\), found \(2, 1, 128\)"):
        tower(images)


def test_token_hook_refuses_a_resnet_tower():
    from framework.model import MedCLModel

    tower = MedCLModel({"model_name": "medcl-resnet18-tiny"}).image_tower
    with pytest.raises(ValueError, match="token hooks need a ViT image tower"):
        TokenHook(tower, lambda t: t)


def test_l2p_refuses_what_it_cannot_serve():
    from framework.paradigms import ContinualModule, SpecializedModule

    with pytest.raises(ValueError, match="top_k expected at most pool_size"):
        L2P(pool_size=3, top_k=4)
    with pytest.raises(ValueError, match="prompts need a ViT image tower"):
        L2P().trainable_module(ContinualModule(backbone="medcl-resnet18-tiny"))
    with pytest.raises(ValueError, match="one prompt pool serves one shared model"):
        L2P().trainable_module(SpecializedModule())
    with pytest.raises(ValueError, match="the image tower must stay frozen"):
        L2P().check_module(ContinualModule())


@pytest.mark.slow
def test_l2p_trains_prompts_and_heads_on_the_frozen_shipped_tower(tmp_path):
    from framework.paradigms import ContinualModule

    config = _config("experiments/strategies/l2p.yaml", tmp_path)
    cli = run_cli(["fit", "--config", str(config)])
    module, l2p = cli.model, next(c for c in cli.trainer.callbacks if isinstance(c, L2P))
    fresh = ContinualModule(backbone="medcl-vit-tiny-minilm", pretrained="medmnist-blood-organa", freeze_image_tower=True)
    fresh.load_pretrained()
    before = dict(fresh.model.image_tower.state_dict())
    after = module.model.image_tower.state_dict()
    assert all(torch.equal(before[k], after[k].cpu()) for k in before)  # the shipped tower did not move
    init = type(l2p.pool)(l2p.pool_size, l2p.prompt_length, 128, l2p.seed)
    assert not torch.equal(init.prompts, l2p.pool.prompts.detach().cpu()) and not torch.equal(init.keys, l2p.pool.keys.detach().cpu())
    assert int(l2p.usage.sum()) > 0 and "train/l2p_keys" in _logged(tmp_path)
    (ckpt,) = list(tmp_path.rglob("last.ckpt"))
    weights = torch.load(ckpt, weights_only=True, map_location="cpu")["state_dict"]
    assert {"strategy_modules.L2P.prompts", "strategy_modules.L2P.keys"} <= set(weights)
    # the checkpoint tests with its prompts: the same test accuracy as the run's last matrix row
    result = json.loads(next(tmp_path.rglob("continual_metrics.json")).read_text())
    tested = run_cli(["test", "--config", str(config), "--ckpt_path", str(ckpt), "--trainer.logger", "false"])
    acc = tested.trainer.callback_metrics["test/retinamnist/acc"].item()
    assert acc == pytest.approx(result["accuracy_matrix"][-1][-1], abs=1e-6)


def test_freezing_listed_as_a_callback_is_refused():
    from framework.paradigms import ContinualModule
    from framework.strategies import Freezing

    module = ContinualModule(freeze="backbone")
    module.freezing.check_module(module)  # the module's own: fine
    with pytest.raises(ValueError, match=r"set model.init_args.freeze: old_heads"):
        Freezing("old_heads").check_module(module)
