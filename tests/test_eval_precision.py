"""Work MedCL does outside Lightning's loops runs under the trainer's precision (framework/precision.py).

Experience-end evaluation (the accuracy matrix, zero-shot and probe), herding features and EWC's
Fisher passes used to run in fp32 even in a ``bf16-mixed`` run; now they run under the same
autocast as the training step, and metrics are still computed in fp32.
"""
import pytest
import pytorch_lightning as pl

from framework.strategies import ExperienceCallback
import torch
import yaml

from framework.cli import run_cli
from framework.precision import trainer_precision
from helpers import shrink_config


@pytest.mark.parametrize("precision, autocast", [("bf16-mixed", True), ("32-true", False)])
def test_trainer_precision_is_the_trainers_autocast(precision, autocast):
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=precision, logger=False, enable_checkpointing=False)
    with trainer_precision(trainer):
        assert torch.is_autocast_enabled("cpu") is autocast
        if autocast:
            assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    assert not torch.is_autocast_enabled("cpu")
    with trainer_precision(None):
        assert not torch.is_autocast_enabled("cpu")


class AutocastProbe(ExperienceCallback):
    """Records whether autocast is on while the experience-end hooks and the evaluation's heads run."""

    def __init__(self) -> None:
        self.at_experience_end = []
        self.in_evaluation = []

    def after_experience(self, trainer, pl_module, experience, tasks) -> None:
        self.at_experience_end.append(torch.is_autocast_enabled("cpu"))
        for model in pl_module.all_models():
            for head in model.heads.values():
                if not getattr(head, "_probed", False):
                    head._probed = True
                    head.register_forward_hook(lambda module, args, out: self.in_evaluation.append(
                        (torch.is_grad_enabled(), torch.is_autocast_enabled("cpu"))))


@pytest.mark.slow
def test_experience_end_evaluation_runs_under_bf16_autocast(tmp_path):
    config = shrink_config("experiments/quickstart.yaml", tmp_path, train_batches=1, extra_trainer={"precision": "bf16-mixed"})
    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"].insert(0, {"class_path": "test_eval_precision.AutocastProbe"})
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    cli = run_cli(["fit", "--config", str(config)])
    (probe,) = [c for c in cli.trainer.callbacks if isinstance(c, AutocastProbe)]
    assert probe.at_experience_end == [True, True]
    evaluation = [autocast for grad, autocast in probe.in_evaluation if not grad]  # no-grad head calls: evaluation
    assert evaluation and all(evaluation)
    scores = cli.trainer.callbacks[[type(c).__name__ for c in cli.trainer.callbacks].index("ContinualEvaluation")].result
    assert all(0.0 <= v <= 1.0 for row in scores["accuracy_matrix"] for v in row if v is not None)
