"""Precision advice for CPU runs, from ``benchmarks/overhead.py``'s measurement.

On a CPU without native bf16 instructions (AVX512-BF16 or AMX) torch's bf16 matrix multiplications
take a slow path: on the 2-core AVX2 machine MedCL is tested on, a bf16 matmul ran hundreds of
times slower than fp32 and a ``bf16-mixed`` training step about 10x slower
(``benchmarks/results/overhead.md``).  MedCL ships ``32-true`` and warns when bf16 is asked for there.
"""
from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.utilities import rank_zero_warn

__all__ = ["cpu_has_native_bf16", "warn_on_slow_precision"]


def cpu_has_native_bf16() -> bool:
    """Whether this CPU has AVX512-BF16 or AMX tiles (what fast bf16 matmuls on CPU need)."""
    import torch

    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if callable(check))


def warn_on_slow_precision(trainer: pl.Trainer) -> bool:
    """Warn (once, rank 0) if a CPU run uses bf16 on a CPU without native bf16; returns whether it warned."""
    precision = str(getattr(trainer, "precision", ""))
    on_cpu = type(trainer.accelerator).__name__ == "CPUAccelerator"
    if "bf16" not in precision or not on_cpu or cpu_has_native_bf16():
        return False
    rank_zero_warn(
        f"trainer.precision={precision!r} on a CPU without native bf16 instructions (no AVX512-BF16 or AMX): "
        f"bf16 matrix multiplications take a slow path here and training runs several times slower than with "
        f"'32-true' (see benchmarks/results/overhead.md); use --trainer.precision 32-true"
    )
    return True
