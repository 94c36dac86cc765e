"""AttentionKernel: the attention kernel chosen for a run (benchmarks/overhead.py: bf16 with the math
kernel trains ~1.5x faster than fp32 on a CPU with native bf16; the fused CPU flash kernel is slow in bf16)."""
from __future__ import annotations

import pytest
import pytorch_lightning as pl
import torch
import yaml
from torch.profiler import ProfilerActivity, profile

from framework.callbacks import AttentionKernel
from framework.cli import run_cli
from helpers import shrink_config

FLASH_CPU_OP = "aten::_scaled_dot_product_flash_attention_for_cpu"


def attention_ops(q: torch.Tensor) -> set:
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.nn.functional.scaled_dot_product_attention(q, q, q)
    return {e.key for e in prof.key_averages()}


class FlagProbe(pl.Callback):
    """Records which attention kernels are enabled while training steps run."""

    seen: list = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        FlagProbe.seen.append((torch.backends.cuda.flash_sdp_enabled(), torch.backends.cuda.math_sdp_enabled()))


@pytest.mark.parametrize("backends, message", [([], "at least one"), (["math", "fastest"], "found \\['fastest'\\]")])
def test_bad_backends_are_refused_with_the_name(backends, message):
    with pytest.raises(ValueError, match=f"AttentionKernel: backends expected .*{message}"):
        AttentionKernel(backends)


def test_math_kernel_replaces_the_cpu_flash_kernel_and_is_restored():
    q = torch.randn(2, 4, 50, 16)
    assert FLASH_CPU_OP in attention_ops(q)  # torch's default on CPU
    callback = AttentionKernel(["math"])
    callback.setup(None, None, "fit")
    try:
        assert FLASH_CPU_OP not in attention_ops(q)
    finally:
        callback.teardown(None, None, "fit")
    assert FLASH_CPU_OP in attention_ops(q)


@pytest.mark.slow
def test_a_shrunk_quickstart_trains_with_the_math_kernel_only(tmp_path):
    config = shrink_config("experiments/quickstart.yaml", tmp_path)
    data = yaml.safe_load(config.read_text())
    data["trainer"]["callbacks"] += [
        {"class_path": "framework.callbacks.AttentionKernel", "init_args": {"backends": ["math"]}},
        {"class_path": "test_attention_kernel.FlagProbe"},
    ]
    config.write_text(yaml.safe_dump(data, sort_keys=False))
    FlagProbe.seen.clear()
    run_cli(["fit", "--config", str(config)])
    assert FlagProbe.seen and all(flags == (False, True) for flags in FlagProbe.seen)  # flash off, math on, every step
    assert torch.backends.cuda.flash_sdp_enabled()  # restored after the run
