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
    wandb_logger = RecordingWandb()
    csv_logger = CSVLogger(save_dir=str(tmp_path))
    trainer = SimpleNamespace(loggers=[wandb_logger, csv_logger], global_step=123)
    cb = ContinualEvaluation()
    cb.result = {"average_accuracy": 0.7, "forgetting": 0.1, "backward_transfer": -0.1}
    row = {"blood": {"acc": 0.8, "score": 0.8}}
    cb._log_row(trainer, 1, row)
    cb._log_row(trainer, 2, row)
    calls = [c.args for c in wandb_logger.fake.define_metric.call_args_list]
    assert calls[0] == ("continual/experience",)
    assert wandb_logger.fake.define_metric.call_args_list[1].kwargs == {"step_metric": "continual/experience"}
    assert len(calls) == 2  # defined once, not per row
    metrics, _ = wandb_logger.logged[0]
    assert metrics["continual/experience"] == 1 and metrics["continual/blood/acc"] == 0.8
    assert metrics["continual/forgetting"] == 0.1
    csv_logger.save()
    text = (tmp_path / "lightning_logs" / "version_0" / "metrics.csv").read_text()
    assert "continual/blood/acc" in text.splitlines()[0]


@pytest.mark.parametrize("rows", [[[0.9, None], [0.5, 0.7]], [[0.8, 0.6]]])
def test_plot_is_written(tmp_path, rows):
    result = {"accuracy_matrix": rows, "tasks": ["a", "b"], "experiences": list(range(len(rows))), "split": "test",
              "paradigm": "X", "average_accuracy": None, "forgetting": None}
    plot_matrix(result, tmp_path / "m.png")
    assert (tmp_path / "m.png").read_bytes()[:4] == b"\x89PNG"


def test_split_is_validated():
    with pytest.raises(ValueError, match="split expected 'val' or 'test'"):
        ContinualEvaluation(split="train")
