"""ContinualEvaluation logging: every logger gets the row; W&B gets its own experience axis."""
from types import SimpleNamespace
from unittest import mock

import pytest
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from framework.callbacks.continual_eval import ContinualEvaluation, plot_matrix


class RecordingWandb(WandbLogger):
    def __init__(self):
        super().__init__(offline=True, project="test")
        self.fake = mock.MagicMock()
        self.logged = []

    @property
    def experiment(self):
        return self.fake

    def log_metrics(self, metrics, step=None):
        self.logged.append((dict(metrics), step))


def test_rows_go_to_every_logger_and_wandb_uses_an_experience_axis(tmp_path):
    import wandb

    wandb_logger = RecordingWandb()
    csv_logger = CSVLogger(save_dir=str(tmp_path))
    trainer = SimpleNamespace(loggers=[wandb_logger, csv_logger], global_step=123, is_global_zero=True, log_dir=str(tmp_path), default_root_dir=str(tmp_path))
    cb = ContinualEvaluation()
    cb.result = {
        "average_accuracy": 0.7, "forgetting": 0.1, "bwt": -0.1, "fwt": 0.05, "tasks": ["blood"], "metrics": {"blood": "acc"},
        "experiences": [1, 2], "accuracy_matrix": [[0.8], [0.8]], "learned_at": {"blood": 1},
        "cross_domain": {}, "cross_task": {"chest": {"zero_shot": [0.5, 0.6], "linear_probe": [0.7, 0.8]}},
    }
    cb.rows = {1: {"blood": {"acc": 0.8, "score": 0.8}}, 2: {"blood": {"acc": 0.8, "score": 0.8}}}
    cb._log_row(trainer, 1)
    cb._log_row(trainer, 2)
    calls = [c.args for c in wandb_logger.fake.define_metric.call_args_list]
    assert calls[0] == ("continual/experience",)
    assert wandb_logger.fake.define_metric.call_args_list[1].kwargs == {"step_metric": "continual/experience"}
    assert len(calls) == 2  # defined once, not per row
    metrics, _ = wandb_logger.logged[0]
    assert metrics["continual/experience"] == 1 and metrics["continual/blood/acc"] == 0.8
    assert metrics["continual/forgetting"] == 0.1 and metrics["continual/fwt"] == 0.05
    assert metrics["continual/cross_task/chest/linear_probe"] == 0.8
    # W&B also gets the matrix and the cross-task scores as tables, against the experience axis
    payload = wandb_logger.fake.log.call_args_list[-1].args[0]
    assert payload["continual/experience"] == 2
    assert isinstance(payload["continual/accuracy_matrix"], wandb.Table) and isinstance(payload["continual/cross_task"], wandb.Table)
    assert payload["continual/accuracy_matrix"].columns == ["row", "blood (acc)"]
    csv_logger.save()
    text = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "continual/blood/acc" in text.splitlines()[0]


@pytest.mark.parametrize("rows", [[[0.9, None], [0.5, 0.7]], [[0.8, 0.6]]])
def test_plot_is_written(tmp_path, rows):
    result = {"accuracy_matrix": rows, "tasks": ["a", "b"], "experiences": list(range(len(rows))), "split": "test",
              "paradigm": "X", "average_accuracy": None, "forgetting": None, "learned_at": {"a": 0, "b": 1}}
    plot_matrix(result, tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_split_is_validated():
    with pytest.raises(ValueError, match="split expected 'val' or 'test'"):
        ContinualEvaluation(split="train")
