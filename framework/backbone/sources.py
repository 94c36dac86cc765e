"""Reading a backbone's source: the name schemas (``hf-hub:``, ``local-dir:``), Hugging Face downloads,
an ``open_clip_config.json``, a Hugging Face text tower's config and tokenizer files, and the weights
file a run starts from (:func:`resolve_weights`).  :mod:`framework.backbone.architecture` builds the
:class:`~framework.backbone.architecture.Architecture` from these and re-exports the public names.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, Mapping, Optional, Union

if TYPE_CHECKING:
    from framework.backbone.architecture import Architecture

__all__ = [
    "SCHEMAS", "WEIGHT_FILES", "schema_of", "hf_download", "offline_hint", "read_config_json", "weights_in_folder", "hf_text_files",
    "resolve_weights",
]

SCHEMAS = ("hf-hub:", "local-dir:")
#: weight files open_clip looks for in a folder or hub repository, preferred first
WEIGHT_FILES = (
    "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
    "open_clip_pytorch_model.pth", "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth",
)


def schema_of(name: str) -> Optional[str]:
    """``"hf-hub"``, ``"local-dir"`` or ``None`` for a plain architecture name."""
    for prefix in SCHEMAS:
        if isinstance(name, str) and name.startswith(prefix):
            return prefix[:-1]
    return None


def hf_download(repo: str, filename: str, cache_dir: Optional[str]) -> str:
    """The local path of ``filename`` of a hub repository (from the cache, or downloaded)."""
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo, filename, cache_dir=cache_dir)


def offline_hint(name: str) -> str:
    """How to make ``name`` available on a machine without internet (appended to errors)."""
    return (
        f"On a machine with internet, fill the Hugging Face cache with `python -c \"import open_clip; open_clip.create_model('{name}')\"` "
        f"and copy ~/.cache/huggingface here (then HF_HUB_OFFLINE=1 works), or download the repository folder and use "
        f"local-dir:/path/to/it (see docs/foundation_models.md)"
    )


def read_config_json(path: Path, what: str) -> Dict[str, Any]:
    """An ``open_clip_config.json``.

    Raises:
        ValueError: naming ``what`` and ``path`` if it is not JSON or not open_clip's config layout.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ValueError(f"{what}: {path} is not readable JSON ({type(err).__name__}: {err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model_cfg"), dict):
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{what}: {path} expected an open_clip config with a 'model_cfg' mapping, found {found}")
    for key in ("embed_dim", "vision_cfg", "text_cfg"):
        if key not in data["model_cfg"]:
            raise ValueError(f"{what}: {path} field 'model_cfg.{key}' is missing (expected open_clip's model config layout)")
    return data


def weights_in_folder(folder: Path) -> Optional[str]:
    """The preferred weights file in ``folder`` (:data:`WEIGHT_FILES` order), or ``None``."""
    # open_clip's own choice order (open_clip.factory._find_checkpoint_in_dir is private)
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return str(folder / name)
    return None


def hf_text_files(text_cfg: Mapping[str, Any], tokenizer_source: Optional[str], what: str) -> Dict[str, Union[str, bytes]]:
    """The Hugging Face text tower's ``config.json`` and tokenizer files, via transformers' own save."""
    from transformers import AutoConfig, AutoTokenizer

    model_source = text_cfg["hf_model_name"]
    tokenizer_source = tokenizer_source or text_cfg.get("hf_tokenizer_name") or model_source
    with tempfile.TemporaryDirectory(prefix="medcl-text-") as tmp:
        try:
            AutoConfig.from_pretrained(model_source).save_pretrained(tmp)
            AutoTokenizer.from_pretrained(tokenizer_source).save_pretrained(tmp)
        except OSError as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RuntimeError(
                f"{what}: the Hugging Face text tower {model_source!r} (tokenizer {tokenizer_source!r}) is not available offline ({first}). "
                + offline_hint(f"hf-hub:{model_source}")
            ) from None
        files: Dict[str, Union[str, bytes]] = {}
        for path in sorted(Path(tmp).iterdir()):
            data = path.read_bytes()
            try:
                files[path.name] = data.decode("utf-8")
            except UnicodeDecodeError:  # e.g. a sentencepiece model
                files[path.name] = data
    return files


def resolve_weights(pretrained: Optional[str], architecture: Architecture, cache_dir: Optional[str] = None) -> Optional[str]:
    """The local file of the CLIP weights a run starts from, or ``None``.

    Args:
        pretrained: ``None`` (the source's own weights: a hub repository's or a folder's, none for
            a plain name), a local file, ``hf-hub:org/repo`` or ``local-dir:/path`` (their weights
            file), or an open_clip tag of a plain name (downloaded, needs internet).
        architecture: the backbone's architecture.
        cache_dir: download cache.

    Raises:
        FileNotFoundError: for a missing file or folder, or a folder without a weights file.
        ValueError: for an unknown tag.
        RuntimeError: if weights cannot be downloaded or are not in the offline cache.
    """
    import open_clip

    if pretrained in (None, "", "none", "None"):
        return architecture.weights
    if not isinstance(pretrained, str):
        raise ValueError(f"CLIPBackbone: pretrained expected None, a file path, hf-hub:org/repo, local-dir:/path or a tag, found {pretrained!r}")
    if os.path.isfile(pretrained):
        return pretrained
    schema = schema_of(pretrained)
    identifier = pretrained[len(schema) + 1:] if schema else pretrained
    if schema == "local-dir":
        folder = Path(identifier).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"CLIPBackbone: pretrained folder not found: {folder}")
        found = weights_in_folder(folder)
        if found is None:
            raise FileNotFoundError(f"CLIPBackbone: pretrained folder {folder} holds no weights file (expected one of {list(WEIGHT_FILES)})")
        return found
    if schema == "hf-hub":
        errors = []
        for filename in WEIGHT_FILES[:4]:
            try:
                return hf_download(identifier, filename, cache_dir)
            except Exception as err:  # not in this repository (or not cached): try the next name
                errors.append(f"{filename}: {type(err).__name__}")
        raise RuntimeError(f"CLIPBackbone: pretrained={pretrained!r}: no weights file could be read ({'; '.join(errors)}). " + offline_hint(pretrained))
    name = architecture.name
    from framework.backbone.shipped import shipped_tags, shipped_weights

    shipped = shipped_weights(name, pretrained)  # MedCL's own pretrained models (framework/backbone/shipped.py)
    if shipped is not None:
        return shipped
    tags = [*shipped_tags(name), *(open_clip.list_pretrained_tags_by_model(name) if schema_of(name) is None else [])]
    if pretrained in tags:
        try:
            return open_clip.download_pretrained(open_clip.get_pretrained_cfg(name, pretrained), cache_dir=cache_dir)
        except Exception as err:
            raise RuntimeError(
                f"CLIPBackbone: could not download pretrained weights {pretrained!r} for {name!r} (no internet?). "
                f"Download them on a machine with internet, e.g. `python -c \"import open_clip; open_clip.create_model('{name}', "
                f"pretrained='{pretrained}', cache_dir='weights')\"`, then pass the local file: pretrained=/path/to/open_clip_model.safetensors"
            ) from err
    if os.sep in pretrained or pretrained.startswith(".") or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors", ".ckpt")):
        raise FileNotFoundError(f"CLIPBackbone: pretrained checkpoint file not found: {pretrained}")
    raise ValueError(
        f"CLIPBackbone: pretrained={pretrained!r} is neither an existing file, hf-hub:org/repo, local-dir:/path nor a known tag for "
        f"{name!r} (known tags: {tags or 'none'})"
    )
