"""A hook on a ViT image tower's token sequence (prompt methods: L2P, DualPrompt, CODA-Prompt).

open_clip's ``VisionTransformer`` embeds patches, adds the class token and positions, applies
``ln_pre`` and runs ``transformer``.  :class:`TokenHook` calls a function on ``ln_pre``'s output (the
sequence the blocks read) and removes, from ``transformer``'s output, the tokens the function
inserted after the class token, so pooling and every head see the sequence they expect.  open_clip
has no public hook there, so this uses PyTorch's public forward hooks on those two submodules.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

__all__ = ["TokenHook", "supports_token_hooks"]


def supports_token_hooks(tower: nn.Module) -> bool:
    """Whether ``tower`` is a ViT with the layout :class:`TokenHook` needs (``ln_pre``, ``transformer``, ``class_embedding``)."""
    return all(isinstance(getattr(tower, n, None), nn.Module) for n in ("ln_pre", "transformer")) and hasattr(tower, "class_embedding")


class TokenHook:
    """Calls ``fn(tokens) -> tokens`` on ``tower``'s token sequence ``(B, 1 + N, width)`` before its blocks.

    ``fn`` may return a longer sequence with extra tokens right after the class token; they are
    removed again after the blocks.  ``fn`` may itself run ``tower.transformer`` (e.g. a query pass
    without prompts): that inner call is left alone.

    Raises:
        ValueError: if ``tower`` is not an open_clip-style ViT (a ResNet, a custom tower).
    """

    def __init__(self, tower: nn.Module, fn: Callable[[Tensor], Tensor]) -> None:
        if not supports_token_hooks(tower):
            raise ValueError(
                f"token hooks need a ViT image tower with ln_pre, transformer and class_embedding (open_clip VisionTransformer); "
                f"found {type(tower).__name__}"
            )
        self.fn = fn
        self._added: Optional[int] = None
        self._handles = [tower.ln_pre.register_forward_hook(self._before_blocks), tower.transformer.register_forward_hook(self._after_blocks)]

    def _before_blocks(self, _module: nn.Module, _inputs, tokens: Tensor) -> Tensor:
        out = self.fn(tokens)
        if out.ndim != 3 or out.shape[0] != tokens.shape[0] or out.shape[2] != tokens.shape[2] or out.shape[1] < tokens.shape[1]:
            raise ValueError(f"token hook: expected a sequence (B, >= {tokens.shape[1]}, {tokens.shape[2]}), found {tuple(out.shape)}")
        self._added = out.shape[1] - tokens.shape[1]
        return out

    def _after_blocks(self, _module: nn.Module, _inputs, out: Tensor) -> Tensor:
        added, self._added = self._added, None
        if not added:  # nothing inserted, or a call of the blocks not preceded by ln_pre
            return out
        return torch.cat([out[:, :1], out[:, 1 + added :]], dim=1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []
