"""The bf16-on-CPU advice (benchmarks/overhead.py: bf16 far slower than fp32 without native bf16; no faster with it unless the math attention kernel is used)."""
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


@pytest.mark.parametrize("with_callback", [False, True])
def test_native_bf16_cpu_is_pointed_to_the_math_attention_kernel(monkeypatch, caplog, with_callback):
    from framework.callbacks import AttentionKernel

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    callbacks = [AttentionKernel(["math"])] if with_callback else []
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, callbacks=callbacks)
    with caplog.at_level("INFO"):
        assert precision.warn_on_slow_precision(trainer) is False
    hinted = "framework.callbacks.AttentionKernel" in caplog.text
    assert hinted is not with_callback  # the hint only when the callback is missing
