"""Guards for the few library APIs MedCL uses that their libraries do not document as public.

Each one is pinned in constraints.txt.  These tests fail loudly when an upgrade renames one, changes
its signature or stops calling it where MedCL relies on it, instead of MedCL silently changing
behaviour.  Where a test here fails after an upgrade, re-check the comment of the use it names.
"""
from __future__ import annotations

import inspect

import pytest
from pytorch_lightning.cli import LightningCLI


def test_lightning_cli_parse_ckpt_path_is_still_the_step_medcl_turns_off():
    """framework/cli.py overrides ``LightningCLI._parse_ckpt_path`` with a method that does nothing.

    No public hook serves: LightningCLI's constructor calls it between ``parse_arguments`` and
    ``before_instantiate_classes``, it copies a ``--ckpt_path`` checkpoint's hyper-parameters over
    the user's ``model`` section (silently replacing fields MedCL's check lets differ), and no
    argument of LightningCLI turns it off.  If it were renamed, MedCL's override would stop taking
    effect without an error.
    """
    method = getattr(LightningCLI, "_parse_ckpt_path", None)
    assert callable(method), "LightningCLI._parse_ckpt_path is gone: see framework/cli.py MedCLCLI._parse_ckpt_path"
    assert list(inspect.signature(method).parameters) == ["self"], inspect.signature(method)
    source = inspect.getsource(LightningCLI.__init__)
    order = [source.find(call) for call in ("self.parse_arguments(", "self._parse_ckpt_path()", "self.before_instantiate_classes()")]
    assert -1 not in order and order == sorted(order), f"LightningCLI.__init__ no longer calls _parse_ckpt_path after parse_arguments: {order}"
    assert "hyper_parameters" in inspect.getsource(method), "LightningCLI._parse_ckpt_path no longer reads the checkpoint's hyper-parameters"


def test_medcl_cli_overrides_only_that_private_method():
    from framework.cli import MedCLCLI

    private = sorted(name for name in vars(MedCLCLI) if name.startswith("_") and not name.startswith("__") and hasattr(LightningCLI, name))
    assert private == ["_parse_ckpt_path"], private


def test_peft_check_target_module_exists_signature():
    """framework/adapters/lora.py refuses LoRA on ``nn.MultiheadAttention`` before injecting, with
    ``check_target_module_exists(config, key)``: peft's own target matching, which only peft's
    tuners expose otherwise (``BaseTuner._check_target_module_exists``, private)."""
    tuners_utils = pytest.importorskip("peft.tuners.tuners_utils")
    from peft import LoraConfig

    function = getattr(tuners_utils, "check_target_module_exists", None)
    assert callable(function), "peft.tuners.tuners_utils.check_target_module_exists is gone: see framework/adapters/lora.py"
    assert list(inspect.signature(function).parameters) == ["config", "key"], inspect.signature(function)
    config = LoraConfig(target_modules=["c_fc"])
    assert function(config, "transformer.resblocks.0.mlp.c_fc") and not function(config, "transformer.resblocks.0.attn")


def test_peft_tuner_layer_routing_api():
    """:func:`framework.adapters.lora.route` uses the public ``BaseTunerLayer`` methods and properties."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    assert list(inspect.signature(BaseTunerLayer.set_adapter).parameters)[:2] == ["self", "adapter_names"]
    assert list(inspect.signature(BaseTunerLayer.enable_adapters).parameters)[:2] == ["self", "enabled"]
    for name in ("active_adapters", "disable_adapters"):
        assert isinstance(inspect.getattr_static(BaseTunerLayer, name), property), name


class _Parsed(Exception):
    """Stops a CLI once its configuration is final (before anything is built)."""


def _parsed_model_args(cli_class, ckpt_path):
    from framework.cli import run_cli

    class Stop(cli_class):
        def before_instantiate_classes(self):
            raise _Parsed(self.config.test.model.init_args.as_dict())

    with pytest.raises(_Parsed) as stopped:
        run_cli(["test", "--config", "experiments/quickstart.yaml", "--ckpt_path", str(ckpt_path)], cli_class=Stop)
    return stopped.value.args[0]


def test_ckpt_path_keeps_the_users_model_section(tmp_path):
    """With ``--ckpt_path``, the configuration's ``lr`` (not model-defining, so the check lets it
    differ) is kept; Lightning's own ``_parse_ckpt_path`` would take the checkpoint's."""
    import torch
    from framework.cli import MedCLCLI

    ckpt = tmp_path / "other_lr.ckpt"
    hparams = {"_class_path": "framework.paradigms.ContinualModule", "backbone": "medcl-vit-tiny", "lr": 0.123,
               "head_args": {"classification": {"learn_class_embeddings": True}}, "epochs_per_experience": 5}
    torch.save({"hyper_parameters": hparams, "state_dict": {}}, ckpt)
    assert _parsed_model_args(MedCLCLI, ckpt)["lr"] == 0.001  # experiments/quickstart.yaml's

    class LightningStep(MedCLCLI):  # what MedCLCLI turns off
        _parse_ckpt_path = LightningCLI._parse_ckpt_path

    assert _parsed_model_args(LightningStep, ckpt)["lr"] == 0.123


def test_ddp_strategy_keeps_its_wrapping_kwargs_in_ddp_kwargs():
    """``framework/paradigms/preflight.py`` sets ``find_unused_parameters`` on a DDPStrategy that exists already
    (a MedCL step leaves the heads of tasks not in the batch unused).  Lightning has no public setter once the
    strategy is built (a user's ``strategy: ddp`` string builds it without the option); it reads the private
    ``_ddp_kwargs`` dict when it wraps the module.  Pinned: pytorch-lightning in constraints.txt."""
    from pytorch_lightning.strategies import DDPStrategy

    strategy = DDPStrategy(find_unused_parameters=True, static_graph=False)
    assert strategy._ddp_kwargs == {"find_unused_parameters": True, "static_graph": False}
    source = inspect.getsource(DDPStrategy._setup_model)
    assert "self._ddp_kwargs" in source  # the dict is what DistributedDataParallel(...) receives
