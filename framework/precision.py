"""Precision advice for CPU runs, from ``benchmarks/overhead.py``'s measurements.

* On a CPU without native bf16 instructions (AVX512-BF16 or AMX) torch's bf16 matrix
  multiplications take a slow path: on a 2-core AVX2 machine a bf16 matmul ran about 100x slower
  than fp32 and a ``bf16-mixed`` training step over 10x slower.  MedCL warns there.
* On a CPU with native bf16 the matmuls are faster than fp32, but torch's fused CPU
  flash-attention kernel is slow in bf16 for MedCL's short sequences, so ``bf16-mixed`` trains no
  faster than ``32-true``; with the math kernel (:class:`framework.callbacks.AttentionKernel`) it
  trains about 1.5x faster (``benchmarks/results/overhead.md``).  MedCL says so once at the start.

MedCL ships ``32-true`` (the same numbers on every CPU).
"""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

__all__ = ["cpu_has_native_bf16", "warn_on_slow_precision", "trainer_precision"]


def trainer_precision(trainer):
    """A context manager running model code under the trainer's precision (autocast for ``bf16-mixed``,
    ``16-mixed``), for the work MedCL does outside Lightning's loops: experience-end evaluation, the
    linear probe, herding features, EWC's Fisher information.  Lightning's public
    ``Precision.forward_context``; a no-op without a trainer."""
    import contextlib

    plugin = getattr(trainer, "precision_plugin", None) if trainer is not None else None
    return plugin.forward_context() if plugin is not None else contextlib.nullcontext()


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX tiles (what fast bf16 matmuls on CPU need)."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if callable(check))


def warn_on_slow_precision(trainer: pl.Trainer) -> bool:
    """Warn (once, rank 0) if a CPU run uses bf16 on a CPU without native bf16; returns whether it warned."""
    precision = str(getattr(trainer, "precision", ""))
    on_cpu = type(trainer.accelerator).__name__ == "CPUAccelerator"
    if "bf16" not in precision or not on_cpu:
        return False
    if cpu_has_native_bf16():
        from framework.callbacks.attention_kernel import AttentionKernel  # (a light module: only Lightning and torch)

        if not any(isinstance(c, AttentionKernel) for c in trainer.callbacks):
            rank_zero_info(
                f"trainer.precision={precision!r} on a CPU with native bf16: torch's fused CPU flash-attention kernel is slow in bf16, "
                f"so a ViT tower trains no faster than with '32-true'; add the callback framework.callbacks.AttentionKernel "
                f"(backends: [math]) for about 1.5x (see benchmarks/results/overhead.md)"
            )
        return False
    rank_zero_warn(
        f"trainer.precision={precision!r} on a CPU without native bf16 instructions (no AVX512-BF16 or AMX): "
        f"bf16 matrix multiplications take a slow path here and training runs several times slower than with "
        f"'32-true' (see benchmarks/results/overhead.md); use --trainer.precision 32-true"
    )
    return True
