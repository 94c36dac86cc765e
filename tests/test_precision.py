"""The bf16-on-CPU warning (benchmarks/overhead.py measured bf16 far slower than fp32 on CPUs without native bf16)."""
import pytest
import pytorch_lightning as pl

from framework import precision


@pytest.mark.parametrize("value, native, warns", [("bf16-mixed", False, True), ("bf16-true", False, True), ("bf16-mixed", True, False), ("32-true", False, False)])
def test_warns_only_for_bf16_on_a_cpu_without_native_bf16(monkeypatch, value, native, warns):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision=value, logger=False, enable_progress_bar=False, enable_checkpointing=False)
    if warns:
        with pytest.warns(UserWarning, match=r"without native bf16 .*use --trainer.precision 32-true"):
            assert precision.warn_on_slow_precision(trainer) is True
    else:
        assert precision.warn_on_slow_precision(trainer) is False


def test_native_bf16_detection_returns_a_bool():
    assert precision.cpu_has_native_bf16() in (True, False)
