"""``torch.compile`` for MedCL's models: the image tower and the task heads, compiled in place.

:class:`CompileModels` calls ``nn.Module.compile`` (PyTorch's in-place form: parameter names, hence
checkpoints, are unchanged) on every model's image tower and heads when a loop starts, and on heads
grown later (a continual run adds one per experience), so a config line is enough::

    trainer:
      callbacks:
        - class_path: framework.callbacks.CompileModels
          init_args: {mode: default}

The first steps of each task pay the compilation (seconds to minutes); whether it pays back depends
on the machine, the model and the number of steps: ``benchmarks/speed.py`` measures it beside
channels-last and bf16.  Compiled and eager forward passes agree up to float rounding (tested).
"""
from __future__ import annotations

import weakref
from typing import Optional

import pytorch_lightning as pl

from framework.callbacks.every_loop import EveryLoopCallback

__all__ = ["CompileModels", "COMPILE_MODES"]

#: ``torch.compile`` modes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class CompileModels(EveryLoopCallback):
    """Compile every model's image tower (and heads) with ``torch.compile``, in place.

    Args:
        mode: a ``torch.compile`` mode (:data:`COMPILE_MODES`).
        heads: compile the task heads too (their forward passes call back into the backbone, prompt caches and MONAI
            sliding windows, where ``torch.compile`` breaks graphs; off by default).
        dynamic: ``torch.compile``'s ``dynamic`` (``None``: PyTorch decides; tasks of several input sizes recompile per size).

    Raises:
        ValueError: on an unknown mode or non-bool ``heads``.
    """

    def __init__(self, mode: str = "default", heads: bool = False, dynamic: Optional[bool] = None) -> None:
        if mode not in COMPILE_MODES:
            raise ValueError(f"CompileModels: mode expected one of {list(COMPILE_MODES)}, found {mode!r}")
        if not isinstance(heads, bool):
            raise ValueError(f"CompileModels: heads expected true or false, found {heads!r}")
        self.mode = mode
        self.heads = heads
        self.dynamic = dynamic
        #: the modules compiled so far (each once); weak references, not id()s: a model rebuilt by a
        #: checkpoint restore may reuse a freed module's id and must still be compiled
        self._done: "weakref.WeakSet" = weakref.WeakSet()

    def _compile(self, module) -> None:
        if module not in self._done:
            module.compile(mode=self.mode, dynamic=self.dynamic)
            self._done.add(module)

    def apply(self, pl_module: pl.LightningModule) -> None:
        if not hasattr(pl_module, "all_models"):
            raise ValueError(f"CompileModels: expected a MedCL paradigm module (framework.paradigms), found {type(pl_module).__name__}")
        for model in pl_module.all_models():
            self._compile(model.image_tower)
            if self.heads:
                for head in model.heads.values():
                    self._compile(head)
