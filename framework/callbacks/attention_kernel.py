"""Choose PyTorch's scaled-dot-product-attention kernel for a whole run.

On a CPU with native bf16 (AVX512-BF16 / AMX), ``bf16-mixed`` is no faster than ``32-true`` for
MedCL's ViT towers because the fused CPU flash-attention kernel, which torch picks by default, is
slow in bf16 for short sequences and narrow heads; with the math kernel the same bf16 step runs
about 1.5x faster than fp32 (``benchmarks/results/overhead.md``).  This callback is a thin wrapper
around :func:`torch.nn.attention.sdpa_kernel` so the choice can be made from a YAML config; a
callback is needed because the context must stay open across Lightning's whole fit/test loop.

Example (YAML)::

    trainer:
      precision: bf16-mixed
      callbacks:
        - class_path: framework.callbacks.AttentionKernel
          init_args: {backends: [math]}
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence

import pytorch_lightning as pl

__all__ = ["AttentionKernel"]


def _backend_names() -> List[str]:
    from torch.nn.attention import SDPBackend

    return [name.lower() for name in SDPBackend.__members__ if name != "ERROR"]


class AttentionKernel(pl.Callback):
    """Restrict ``torch.nn.functional.scaled_dot_product_attention`` to the given kernels while a
    Lightning stage (fit, validate, test, predict) runs; the previous choice is restored afterwards.

    Args:
        backends: kernel names, in any order: ``math``, ``flash_attention``, ``efficient_attention``,
            ``cudnn_attention``, ``overrideable`` (the members of ``torch.nn.attention.SDPBackend``).

    Raises:
        ValueError: if ``backends`` is empty or names an unknown kernel.
    """

    def __init__(self, backends: Sequence[str] = ("math",)) -> None:
        super().__init__()
        if isinstance(backends, str):
            backends = [backends]
        known = _backend_names()
        if not backends:
            raise ValueError(f"AttentionKernel: backends expected at least one of {known}, found an empty list")
        unknown = [b for b in backends if str(b).lower() not in known]
        if unknown:
            raise ValueError(f"AttentionKernel: backends expected names from {known}, found {unknown}")
        self.backends = [str(b).lower() for b in backends]
        self._stack: Optional[contextlib.ExitStack] = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        self.teardown(trainer, pl_module, stage)  # never nest two contexts
        self._stack = contextlib.ExitStack()
        self._stack.enter_context(sdpa_kernel([SDPBackend.__members__[b.upper()] for b in self.backends]))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._stack is not None:
            self._stack.close()
            self._stack = None
