"""Where a backbone comes from: its architecture, its tokenizer files and its pretrained weights.

A backbone is named three ways, as in open_clip:

* a plain architecture name (``medcl-vit-tiny``, ``ViT-B-16``, ...), from open_clip's registry;
* ``hf-hub:org/repo``: a Hugging Face repository with an ``open_clip_config.json`` (BiomedCLIP,
  ...), read from the Hugging Face cache, so it works offline once the cache is filled
  (``HF_HUB_OFFLINE=1``);
* ``local-dir:/path``: a folder with an ``open_clip_config.json`` (and usually the weights and the
  tokenizer files), e.g. a downloaded hub repository.

Whatever the route, the backbone is resolved into an :class:`Architecture`: the open_clip model
config, the preprocessing config and, for a Hugging Face text tower, its ``config.json`` and
tokenizer files (a few hundred kB).  Its :meth:`~Architecture.to_record` is stored in every MedCL
checkpoint, so a checkpoint rebuilds its model on a machine that has neither the original folder,
the hub cache nor the pretrained file (:func:`register_checkpoint_architecture`).  The weights
themselves are in the checkpoint's ``state_dict``.

The model is always built by open_clip itself (``create_model('local-dir:...')``) from a folder
materialised from the architecture under ``$MEDCL_CACHE/architectures/``; only the pretrained
*weights* are loaded separately (:func:`resolve_weights`), when a run starts from them.  Reading a
source (schemas, hub downloads, config files, text-tower files, weights) is in
:mod:`framework.backbone.sources`; this module re-exports its public names.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, Mapping, Optional, Union

from framework.backbone.sources import (
    SCHEMAS, WEIGHT_FILES, hf_download, hf_text_files, offline_hint, read_config_json, resolve_weights, schema_of, weights_in_folder,
)

__all__ = [
    "Architecture",
    "quiet_local_dir_build",
    "SCHEMAS",
    "architecture_of_checkpoint",
    "forget_checkpoint_architectures",
    "register_checkpoint_architecture",
    "resolve_architecture",
    "resolve_weights",
    "schema_of",
]

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
#: architectures read from checkpoints in this process: backbone name -> architecture
_FROM_CHECKPOINTS: Dict[str, "Architecture"] = {}


def _cache_dir() -> Path:
    return Path(os.environ.get("MEDCL_CACHE", Path.home() / ".cache" / "medcl"))


@dataclass
class Architecture:
    """A backbone's architecture, independent of where it was read from.

    Args:
        name: the backbone name as configured (plain, ``hf-hub:`` or ``local-dir:``).
        model_cfg: open_clip's model config (``embed_dim``, ``vision_cfg``, ``text_cfg``).
        preprocess_cfg: open_clip's preprocessing config (``mean``, ``std``, ``size``, ...).
        files: the Hugging Face text tower's ``config.json`` and tokenizer files (name -> content).
        weights: this machine's file with the source's own CLIP weights (not stored in checkpoints).
        text_weights: where the Hugging Face text tower's own pretrained weights are (a folder or
            hub id), used when no CLIP weights are loaded (not stored in checkpoints).
        stored: read from a checkpoint rather than from the source.
    """

    name: str
    model_cfg: Dict[str, Any]
    preprocess_cfg: Dict[str, Any] = field(default_factory=dict)
    files: Dict[str, Union[str, bytes]] = field(default_factory=dict)
    weights: Optional[str] = None
    text_weights: Optional[str] = None
    stored: bool = False

    @property
    def hf_text(self) -> bool:
        """Whether the text tower is a Hugging Face model."""
        return "hf_model_name" in self.model_cfg.get("text_cfg", {})

    def to_record(self) -> Dict[str, Any]:
        """The plain-python form stored in checkpoints (no paths of this machine)."""
        cfg = copy.deepcopy(self.model_cfg)
        return {"format": RECORD_FORMAT, "name": self.name, "model_cfg": cfg, "preprocess_cfg": dict(self.preprocess_cfg), "files": dict(self.files)}

    @classmethod
    def from_record(cls, record: Mapping[str, Any], source: str) -> "Architecture":
        """Rebuild from :meth:`to_record` output.

        Raises:
            ValueError: naming ``source`` if the record is malformed.
        """
        if not isinstance(record, Mapping) or not isinstance(record.get("model_cfg"), Mapping) or not isinstance(record.get("name"), str):
            raise ValueError(f"{source}: expected a backbone architecture record with 'name' and 'model_cfg', found {type(record).__name__}")
        if record.get("format") != RECORD_FORMAT:
            raise ValueError(f"{source}: backbone architecture record format {record.get('format')!r}, this MedCL reads format {RECORD_FORMAT}")
        return cls(
            name=record["name"], model_cfg=copy.deepcopy(dict(record["model_cfg"])), preprocess_cfg=dict(record.get("preprocess_cfg", {})),
            files=dict(record.get("files", {})), stored=True,
        )

    def materialise(self, text_source: Optional[str] = None) -> Path:
        """An open_clip ``local-dir`` folder for this architecture (written once, atomically).

        Args:
            text_source: a local Hugging Face folder whose weights the text tower loads while it is
                built (``hf_model_pretrained``); by default the text tower's ``hf_model_name`` points
                at the folder itself (its ``config.json``) and no weights are loaded.
        """
        record = self.to_record()
        record["text_source"] = text_source
        digest = hashlib.sha256(json.dumps({k: v for k, v in record.items() if k != "files"}, sort_keys=True, default=str).encode())
        for name in sorted(self.files):
            content = self.files[name]
            digest.update(name.encode() + (content if isinstance(content, bytes) else content.encode()))
        target = _cache_dir() / "architectures" / digest.hexdigest()[:20]
        if (target / "open_clip_config.json").is_file():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".arch-"))
        try:
            cfg = copy.deepcopy(self.model_cfg)
            text = cfg.get("text_cfg", {})
            if self.hf_text:
                text["hf_model_name"] = str(text_source or target)
                text["hf_tokenizer_name"] = str(target)
                text["hf_model_pretrained"] = bool(text_source)
            cfg.get("vision_cfg", {}).pop("timm_model_pretrained", None)
            for name, content in self.files.items():
                (tmp / name).write_bytes(content if isinstance(content, bytes) else content.encode())
            (tmp / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": self.preprocess_cfg}, indent=2))
            try:
                os.replace(tmp, target)  # another process may have written the same folder first: keep it
            except OSError:
                if not (target / "open_clip_config.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return target


class _NoWeightsNote(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return "no CLIP weights found" not in message and not ("No pretrained weights loaded" in message and "architectures" in message)


@contextlib.contextmanager
def quiet_local_dir_build() -> Iterator[None]:
    """Drop open_clip's "no CLIP weights found" / "No pretrained weights loaded" while MedCL builds
    from a materialised folder: it never holds weights, they are loaded separately (or come from a checkpoint)."""
    note = _NoWeightsNote()
    root = logging.getLogger()
    root.addFilter(note)
    try:
        yield
    finally:
        root.removeFilter(note)


# ---------------------------------------------------------------------------- resolving a name
def resolve_architecture(name: str, pretrained: Optional[str] = None, cache_dir: Optional[str] = None, from_source: bool = False) -> Architecture:
    """The :class:`Architecture` of a backbone name (a checkpoint's stored one first, see
    :func:`register_checkpoint_architecture`).

    Args:
        name: plain open_clip architecture name, ``hf-hub:org/repo`` or ``local-dir:/path``.
        pretrained: an open_clip tag of a plain name (its preprocessing is merged in).
        cache_dir: open_clip / Hugging Face download cache.
        from_source: resolve from the name's source on this machine even if a checkpoint's is registered.

    Raises:
        ValueError: for an unknown plain name, an empty schema path or a malformed config file.
        FileNotFoundError: if a ``local-dir`` folder or its ``open_clip_config.json`` is missing.
        RuntimeError: if a hub repository is not in the (offline) cache.
    """
    import open_clip
    from open_clip.transform import PreprocessCfg

    if not isinstance(name, str) or not name:
        raise ValueError(f"backbone: expected an open_clip architecture name, hf-hub:org/repo or local-dir:/path, found {name!r}")
    stored = None if from_source else _FROM_CHECKPOINTS.get(name)
    if stored is not None:
        return copy.deepcopy(stored)
    schema = schema_of(name)
    identifier = name[len(schema) + 1:] if schema else name
    what = f"backbone {name!r}"
    preprocess = {k: v for k, v in vars(PreprocessCfg()).items()}
    weights = None
    tokenizer_source = None
    if schema is not None and not identifier:
        raise ValueError(f"{what}: expected a path or repository after '{schema}:', found nothing")
    if schema == "local-dir":
        folder = Path(identifier).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"{what}: folder not found: {folder} (cwd {Path.cwd()})")
        config_path = folder / "open_clip_config.json"
        if not config_path.is_file():
            found = sorted(p.name for p in folder.iterdir())[:10]
            raise FileNotFoundError(f"{what}: {config_path} not found (expected an open_clip model folder with open_clip_config.json; found {found})")
        data = read_config_json(config_path, what)
        weights = weights_in_folder(folder)
        tokenizer_source = str(folder)  # open_clip reads a local-dir model's tokenizer from the folder itself
    elif schema == "hf-hub":
        try:
            config_path = Path(hf_download(identifier, "open_clip_config.json", cache_dir))
        except Exception as err:  # huggingface_hub raises several types for a missing cache entry offline
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise RuntimeError(f"{what}: open_clip_config.json of {identifier!r} could not be read ({type(err).__name__}: {first}). " + offline_hint(name)) from None
        data = read_config_json(config_path, what)
        for filename in WEIGHT_FILES[:4]:
            try:
                weights = hf_download(identifier, filename, cache_dir)
                break
            except Exception:  # not in this repository (or not cached): try the next name
                continue
    else:
        from framework.backbone.clip import register_model_configs
        from framework.backbone.minilm import MINILM_SUFFIX, register_minilm_configs

        register_model_configs()
        if name.endswith(MINILM_SUFFIX):
            from framework.backbone.clip import MODEL_CONFIG_DIR

            register_minilm_configs(MODEL_CONFIG_DIR)
        cfg = open_clip.get_model_config(name)
        if cfg is None:
            from framework.backbone.minilm import minilm_architectures

            tiny = sorted({m for m in open_clip.list_models() if m.startswith("medcl-")} | set(minilm_architectures()))
            raise ValueError(
                f"CLIPBackbone: unknown open_clip architecture model_name={name!r}; MedCL's CPU-sized ones are {tiny}, "
                f"framework.backbone.list_architectures() lists all; a hub or folder model is named hf-hub:org/repo or local-dir:/path"
            )
        data = {"model_cfg": copy.deepcopy(cfg), "preprocess_cfg": {}}
        if pretrained and pretrained in open_clip.list_pretrained_tags_by_model(name):
            tag = open_clip.get_pretrained_cfg(name, pretrained)
            data["preprocess_cfg"] = {k: tag[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag}
    model_cfg = copy.deepcopy(data["model_cfg"])
    preprocess.update(data.get("preprocess_cfg") or {})
    vision = model_cfg.get("vision_cfg", {})
    preprocess["size"] = vision.get("image_size", preprocess.get("size"))
    architecture = Architecture(name=name, model_cfg=model_cfg, preprocess_cfg=preprocess, weights=weights)
    if architecture.hf_text:
        text = model_cfg["text_cfg"]
        architecture.files = hf_text_files(text, tokenizer_source, what)
        if text.get("hf_model_pretrained", True) and weights is None:
            architecture.text_weights = text["hf_model_name"]
    return architecture



# ---------------------------------------------------------------------------- checkpoints
def architecture_of_checkpoint(checkpoint: Mapping[str, Any], source: str) -> Optional[Architecture]:
    """The backbone architecture stored in a MedCL checkpoint (``None`` for one written before
    checkpoints stored it, or for a custom backbone)."""
    meta = checkpoint.get("medcl") if isinstance(checkpoint, Mapping) else None
    record = meta.get("architecture") if isinstance(meta, Mapping) else None
    return None if record is None else Architecture.from_record(record, f"{source} field 'medcl.architecture'")


def forget_checkpoint_architectures() -> None:
    """Forget the architectures registered from checkpoints: a fresh run then builds its backbone
    from the source again (with, e.g., its text tower's own pretrained weights)."""
    _FROM_CHECKPOINTS.clear()


def register_checkpoint_architecture(checkpoint: Union[str, os.PathLike, Mapping[str, Any]], source: Optional[str] = None) -> Optional[Architecture]:
    """Make the architecture stored in a checkpoint the one its backbone name builds in this process.

    A checkpoint's weights belong to the architecture it stores, so testing, predicting or growing
    it never needs the original ``local-dir`` folder, hub cache or pretrained file.

    Args:
        checkpoint: a checkpoint file or an already loaded checkpoint dictionary.
        source: how to name it in errors.

    Returns:
        the registered architecture, or ``None`` if the checkpoint stores none.
    """
    if not isinstance(checkpoint, Mapping):
        from framework.core.checkpoints import load_checkpoint

        source = source or f"checkpoint {str(checkpoint)!r}"
        checkpoint = load_checkpoint(checkpoint, source, mmap=True)
    architecture = architecture_of_checkpoint(checkpoint, source or "checkpoint")
    if architecture is not None:
        _FROM_CHECKPOINTS[architecture.name] = architecture
    return architecture
