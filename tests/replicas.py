"""Faithful offline replicas of public open_clip hub models, for tests.

A replica has the real model's file layout and ``open_clip_config.json`` structure (same keys,
same nesting, same tower types, poolers and projections) with random weights, so the
``hf-hub:org/repo`` and ``local-dir:/path`` code paths of open_clip run for real with
``HF_HUB_OFFLINE=1`` and nothing downloaded.  ``shrink=True`` swaps in a tiny timm ViT and a
tiny BERT (same classes, few layers, small widths, a few-hundred-word WordPiece vocabulary)
so a build and a training step take well under a second after the imports.

What open_clip 3.3 reads (see ``open_clip/factory.py``):

* ``local-dir:<dir>``: ``<dir>/open_clip_config.json`` (must have ``model_cfg``); the CLIP
  weights, found by ``_find_checkpoint_in_dir`` (``*.safetensors``, ``*.bin``, ``*.pth`` at the
  top level, ``open_clip_model.safetensors`` preferred; none is only a warning); the tokenizer
  from ``<dir>`` itself (``AutoTokenizer.from_pretrained(<dir>)``, ``hf_tokenizer_name`` ignored).
  The text tower's *architecture* is still ``AutoConfig.from_pretrained(text_cfg.hf_model_name)``,
  so a downloaded BiomedCLIP folder keeps needing the hub (or a filled cache) for the BERT
  ``config.json``; :func:`make_local_dir_replica` therefore bundles the text tower in
  ``<dir>/text_encoder`` and points ``hf_model_name`` at it, unless ``text_source="hub"``.
* ``hf-hub:<repo>``: ``open_clip_config.json`` and ``open_clip_model.safetensors`` else
  ``open_clip_pytorch_model.bin`` from the repo; the text tower's ``config.json`` (plus its weights
  when no CLIP weights exist) *and the tokenizer* come from the ``hf_model_name`` /
  ``hf_tokenizer_name`` hub repo, not from the CLIP repo.

Random weights are deterministic (``seed``) and built without touching the global RNG.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Union

__all__ = [
    "BIOMEDCLIP_REPO_ID",
    "BIOMEDCLIP_TEXT_HUB_ID",
    "LEGACY_BIOMEDCLIP_TEXT_HUB_ID",
    "TINY_TIMM_MODEL",
    "TINY_IMAGE_SIZE",
    "biomedclip_config",
    "biomedclip_full_config",
    "text_tower_config",
    "replica_vocab",
    "write_tokenizer_files",
    "write_text_tower",
    "make_local_dir_replica",
    "fill_hf_cache",
    "offline_hf_env",
    "use_hf_cache",
]

PathLike = Union[str, "os.PathLike[str]"]

BIOMEDCLIP_REPO_ID = "microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224"
#: The text tower named by the hub's current ``open_clip_config.json`` (Microsoft renamed
#: PubMedBERT to BiomedBERT; the hub redirects the old id online, an offline cache does not).
BIOMEDCLIP_TEXT_HUB_ID = "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract"
#: The id the config named at release (2023); pass it as ``text_model`` to replicate old snapshots.
LEGACY_BIOMEDCLIP_TEXT_HUB_ID = "microsoft/BiomedNLP-PubMedBERT-base-uncased-abstract"

#: timm's own test ViT (``VisionTransformer``, patch 16, width 64, depth 6, 0.3 M parameters).
#: open_clip's TimmModel does not pass ``image_size`` to timm, so the image size must be the
#: architecture's default input size (160), as 224 is for ``vit_base_patch16_224``.
TINY_TIMM_MODEL = "test_vit"
TINY_IMAGE_SIZE = 160

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]

CLIP_SAFE_WEIGHTS = "open_clip_model.safetensors"
CLIP_BIN_WEIGHTS = "open_clip_pytorch_model.bin"
TEXT_DIR_NAME = "text_encoder"

# PubMedBERT's vocab.txt starts with the five special tokens in this order ([PAD] = 0 = pad_token_id).
_SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_WORDS = """
a an the of in on at to for from with without by and or not no is are was were be been this that these
those it its as into over under between within showing shows shown image images photo photograph picture
scan scans slice slices view section sections patch patches sample specimen stain stained staining
microscopy microscopic microscope histology histopathology histological pathology cytology biopsy
x ray xray radiograph radiography chest ct mri pet spect ultrasound sonography mammography endoscopy
fundus retina retinal oct optical coherence tomography dermatoscopy dermatoscopic dermoscopy
blood cell cells neutrophil neutrophils lymphocyte lymphocytes monocyte monocytes eosinophil eosinophils
basophil basophils platelet platelets erythroblast erythrocyte erythrocytes leukocyte leukocytes
granulocyte granulocytes immature mature red white smear marrow
normal abnormal benign malignant healthy disease diseased lesion lesions tumor tumour tumors cancer
carcinoma adenocarcinoma squamous basal melanoma melanocytic nevus nevi keratosis keratoses actinic
intraepithelial dermatofibroma vascular hyperplastic metastasis metastatic mass nodule nodules cyst
pneumonia atelectasis cardiomegaly effusion infiltration pneumothorax consolidation edema emphysema
fibrosis pleural thickening hernia fracture fractures displaced nondisplaced buckle rib
choroidal neovascularization diabetic macular drusen retinopathy mild moderate severe proliferative
adipose background debris mucus mucosa smooth muscle stroma epithelium colon colorectal associated
tissue tissues kidney liver lung lungs heart brain spleen pancreas bladder femur bone bones adrenal gland
stomach intestine bowel prostate breast thyroid skin eye eyes vessel vessels artery aneurysm cortex
duct tubule tubules collecting connecting convoluted distal proximal glomerular endothelial interstitial
podocytes segment segments ascending thick limb axial coronal sagittal left right upper lower
abdominal abdomen pelvis pelvic head neck spine spinal cardiac pulmonary renal hepatic cerebral
paediatric pediatric adult child patient patients male female
grade stage level class type case cases finding findings sign signs evidence
small large big tiny round oval irregular dark bright low high
one two three four five zero first second
electron synapse excitatory inhibitory volume organ organs
photo like well inside showing
"""
# Sub-word pieces and single characters make any lower-case ASCII word tokenise without [UNK].
_CHARS = list("abcdefghijklmnopqrstuvwxyz0123456789") + list(".,;:!?'\"()[]{}-_/\\&%+=*#@$<>|~`^")
_SUFFIXES = ["s", "es", "ed", "ing", "ly", "al", "ic", "ous", "ive", "tion", "ity", "er", "ers", "ment", "ness", "oma", "itis"]


def replica_vocab() -> List[str]:
    """The WordPiece vocabulary of the shrunk replicas (and the synthetic one of the full replica).

    Returns:
        Tokens in id order: the five BERT special tokens first (``[PAD]`` = 0, ``[UNK]`` = 1,
        ``[CLS]`` = 2, ``[SEP]`` = 3, ``[MASK]`` = 4, as in PubMedBERT), then a few hundred
        common and medical words, then single characters and ``##`` continuations so no
        lower-case ASCII word maps to ``[UNK]``.
    """
    vocab: List[str] = list(_SPECIAL)
    seen = set(vocab)
    for token in _WORDS.split() + _CHARS + ["##" + c for c in _CHARS if c.isalnum()] + ["##" + s for s in _SUFFIXES]:
        if token not in seen:
            seen.add(token)
            vocab.append(token)
    return vocab


def text_tower_config(shrink: bool = True) -> Dict[str, object]:
    """The text tower's ``config.json`` (PubMedBERT/BiomedBERT-base layout).

    Args:
        shrink: a tiny BERT (2 layers, width 32, the :func:`replica_vocab` size) instead of the
            real BERT-base sizes (12 layers, width 768, vocab 30522).

    Returns:
        The JSON dict; ``max_position_embeddings`` stays 512 either way, which the 256-token
        context length needs.
    """
    config: Dict[str, object] = {
        "architectures": ["BertForMaskedLM"],
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "bert",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "type_vocab_size": 2,
        "use_cache": True,
        "vocab_size": 30522,
    }
    if shrink:
        config.update(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                      vocab_size=len(replica_vocab()))
    return config


def biomedclip_config(shrink: bool = True, text_model: str = BIOMEDCLIP_TEXT_HUB_ID) -> Dict[str, object]:
    """BiomedCLIP's ``open_clip_config.json``: the hub file's keys and layout.

    Args:
        shrink: use the tiny timm ViT (:data:`TINY_TIMM_MODEL` at :data:`TINY_IMAGE_SIZE` px)
            instead of ``vit_base_patch16_224`` at 224 px.  The text tower's size is not in this
            file (it is the ``config.json`` behind ``text_model``, see :func:`text_tower_config`).
        text_model: ``hf_model_name`` and ``hf_tokenizer_name``: a hub id (resolved through the HF
            cache, see :func:`fill_hf_cache`) or a local folder holding the text tower.

    Returns:
        ``{"model_cfg": {...}, "preprocess_cfg": {"mean": ..., "std": ...}}`` (OpenAI mean/std),
        a fresh dict on every call.
    """
    vision = {
        "timm_model_name": TINY_TIMM_MODEL if shrink else "vit_base_patch16_224",
        "timm_model_pretrained": False,
        "timm_pool": "",
        "timm_proj": "linear",
        "image_size": TINY_IMAGE_SIZE if shrink else 224,
    }
    text = {
        "hf_model_name": str(text_model),
        "hf_tokenizer_name": str(text_model),
        "hf_proj_type": "mlp",
        "hf_pooler_type": "cls_last_hidden_state_pooler",
        "context_length": 256,
    }
    return {
        "model_cfg": {"embed_dim": 512, "vision_cfg": vision, "text_cfg": text},
        "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)},
    }


def biomedclip_full_config(text_model: str = BIOMEDCLIP_TEXT_HUB_ID) -> Dict[str, object]:
    """The real, unshrunk BiomedCLIP config (ViT-B/16 at 224 px, PubMedBERT-base, context 256).

    Args:
        text_model: as in :func:`biomedclip_config`.

    Returns:
        The ``open_clip_config.json`` dict.  Pair it with ``text_tower_config(shrink=False)``
        (width 768, 12 layers, vocab 30522); replicas written with ``shrink=False`` do.  Their
        vocab file is still the small synthetic one, so token ids stay far below 30522.
    """
    return biomedclip_config(shrink=False, text_model=text_model)


# ---------------------------------------------------------------------------------------------
# writers


def _dump_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_tokenizer_files(path: PathLike, full: bool = True) -> Path:
    """Write the BERT WordPiece tokenizer of the replicas into ``path``.

    Args:
        path: folder (created if missing).
        full: also ``tokenizer.json`` (the fast-tokenizer serialisation, built by transformers)
            and ``special_tokens_map.json``, as the BiomedCLIP repo has; otherwise only
            ``vocab.txt`` and ``tokenizer_config.json``, as the text-tower repo has.

    Returns:
        ``path``.  ``AutoTokenizer.from_pretrained(path)`` gives an uncased ``BertTokenizer``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab = replica_vocab()
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    specials = dict(unk_token="[UNK]", sep_token="[SEP]", pad_token="[PAD]", cls_token="[CLS]", mask_token="[MASK]")
    _dump_json(path / "tokenizer_config.json", {
        **specials,
        "do_basic_tokenize": True,
        "do_lower_case": True,
        "model_max_length": 1000000000000000019884624838656,
        "never_split": None,
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "tokenizer_class": "BertTokenizer",
    })
    if full:
        _dump_json(path / "special_tokens_map.json", specials)
        # transformers >= 5: BertTokenizer takes ``vocab=`` (a dict); ``vocab_file=`` is silently ignored.
        from transformers import BertTokenizer

        tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
        tokenizer.backend_tokenizer.save(str(path / "tokenizer.json"))
    return path


def _seeded(seed: int):
    import torch

    class _Ctx:
        def __enter__(self):
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed(seed)

        def __exit__(self, *exc):
            return self._fork.__exit__(*exc)

    return _Ctx()


def write_text_tower(path: PathLike, shrink: bool = True, with_weights: Optional[bool] = None, seed: int = 0) -> Path:
    """Write a text-tower folder as the BiomedBERT hub repo has it.

    Args:
        path: folder (created if missing).
        shrink: tiny BERT or the real BERT-base sizes (:func:`text_tower_config`).
        with_weights: write random ``model.safetensors`` (a ``BertModel`` state dict without the
            pooler, which open_clip's ``cls_last_hidden_state_pooler`` tower lacks).  open_clip
            loads it only when no CLIP checkpoint is found (``pretrained_text`` default).  ``None``
            means ``shrink`` (the BERT-base file would be 440 MB).
        seed: torch seed of the random weights.

    Returns:
        ``path``, holding ``config.json``, ``vocab.txt``, ``tokenizer_config.json`` and maybe
        ``model.safetensors``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = text_tower_config(shrink)
    _dump_json(path / "config.json", config)
    write_tokenizer_files(path, full=False)
    if with_weights is None:
        with_weights = shrink
    if with_weights:
        from safetensors.torch import save_file
        from transformers import BertConfig, BertModel

        with _seeded(seed):
            model = BertModel(BertConfig(**config), add_pooling_layer=False)
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "model.safetensors"),
                  metadata={"format": "pt"})
    return path


def _random_clip_state_dict(config: Mapping, text_dir: Path, seed: int) -> Dict[str, "object"]:
    """A randomly initialised open_clip model for ``config``, its text tower read from ``text_dir``."""
    import open_clip

    model_cfg = copy.deepcopy(dict(config["model_cfg"]))
    model_cfg["vision_cfg"]["timm_model_pretrained"] = False
    model_cfg["text_cfg"].update(hf_model_name=str(text_dir), hf_model_pretrained=False)
    model_cfg.pop("custom_text", None)
    with _seeded(seed):
        model = open_clip.CustomTextCLIP(**model_cfg)
    return {k: v.detach().contiguous() for k, v in model.state_dict().items()}


def _save_clip_weights(state_dict: Mapping, target: Path) -> None:
    if target.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(dict(state_dict), str(target), metadata={"format": "pt"})
    else:
        import torch

        torch.save(dict(state_dict), str(target))


def make_local_dir_replica(
    path: PathLike,
    shrink: bool = True,
    with_weights: bool = True,
    text_source: str = "bundled",
    text_model: str = BIOMEDCLIP_TEXT_HUB_ID,
    seed: int = 0,
) -> Path:
    """Write a BiomedCLIP replica usable as ``local-dir:<path>`` by open_clip 3.3.

    ``open_clip.create_model_and_transforms("local-dir:" + str(path))`` and
    ``open_clip.get_tokenizer("local-dir:" + str(path))`` then work offline.

    Args:
        path: folder (created if missing).  Files: ``open_clip_config.json``, ``vocab.txt``,
            ``tokenizer.json``, ``tokenizer_config.json``, ``special_tokens_map.json``,
            ``open_clip_model.safetensors`` (with ``with_weights``) and, bundled, ``text_encoder/``.
        shrink: tiny towers (fast) or the real architecture sizes.
        with_weights: write ``open_clip_model.safetensors`` from a randomly initialised model
            (seeded; 0.8 GB with ``shrink=False``).  Without it open_clip warns and builds a random
            model, loading the text tower's own weights (``pretrained_text=True``, the default):
            bundled shrunk replicas have them; for ``shrink=False`` pass ``pretrained_text=False``.
        text_source: ``"bundled"``: the text tower goes to ``<path>/text_encoder`` and
            ``hf_model_name`` / ``hf_tokenizer_name`` hold its absolute path (self-contained,
            no HF cache needed, not relocatable).  ``"hub"``: keep ``text_model`` as on the hub, as
            a folder downloaded from the hub has it; building then needs the text tower in the HF
            cache: ``fill_hf_cache(cache, text_model=...)`` plus :func:`offline_hf_env` /
            :func:`use_hf_cache`.
        text_model: the hub id written with ``text_source="hub"``.
        seed: torch seed of the random weights (the global RNG is left untouched).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for an unknown ``text_source``.
    """
    if text_source not in ("bundled", "hub"):
        raise ValueError(f"text_source expected 'bundled' or 'hub', found {text_source!r}")
    path = Path(path).absolute()
    path.mkdir(parents=True, exist_ok=True)
    text_dir = path / TEXT_DIR_NAME
    write_text_tower(text_dir, shrink=shrink, seed=seed)
    config = biomedclip_config(shrink, text_model=str(text_dir) if text_source == "bundled" else text_model)
    _dump_json(path / "open_clip_config.json", config)
    write_tokenizer_files(path, full=True)
    if with_weights:
        _save_clip_weights(_random_clip_state_dict(config, text_dir, seed), path / CLIP_SAFE_WEIGHTS)
    if text_source == "hub":
        shutil.rmtree(text_dir)
    return path


# ---------------------------------------------------------------------------------------------
# Hugging Face hub cache


def _blob_name(data: bytes, lfs: bool) -> str:
    """The hub cache's blob name: the sha256 for LFS files, the git blob sha1 otherwise."""
    if lfs:
        return hashlib.sha256(data).hexdigest()
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _write_cached_repo(cache_dir: Path, repo_id: str, files: Mapping[str, bytes], commit_seed: str) -> Path:
    """Lay ``files`` out as ``models--org--name/{blobs,refs/main,snapshots/<commit>}``; return the snapshot."""
    repo_dir = cache_dir / ("models--" + repo_id.replace("/", "--"))
    commit = hashlib.sha1(f"medcl-replica:{repo_id}:{commit_seed}".encode()).hexdigest()
    snapshot = repo_dir / "snapshots" / commit
    if snapshot.exists():
        shutil.rmtree(snapshot)
    (repo_dir / "blobs").mkdir(parents=True, exist_ok=True)
    (repo_dir / "refs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        blob = repo_dir / "blobs" / _blob_name(data, lfs=name.endswith((".bin", ".safetensors", ".pth", ".msgpack")))
        blob.write_bytes(data)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        try:
            link.symlink_to(os.path.relpath(blob, link.parent))
        except OSError:  # no symlinks (Windows without developer mode): huggingface_hub copies too
            shutil.copyfile(blob, link)
    (repo_dir / "refs" / "main").write_text(commit)  # no trailing newline, as huggingface_hub writes it
    return snapshot


def _read_folder(folder: Path) -> Dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def fill_hf_cache(
    cache_dir: PathLike,
    repo_id: str = BIOMEDCLIP_REPO_ID,
    shrink: bool = True,
    with_weights: bool = True,
    weights_format: str = "bin",
    text_model: str = BIOMEDCLIP_TEXT_HUB_ID,
    seed: int = 0,
) -> Path:
    """Fill a Hugging Face hub cache with a BiomedCLIP replica and its text tower.

    Writes ``models--org--repo/{blobs,refs/main,snapshots/<40-hex commit>}`` (snapshot files are
    relative symlinks to the blobs, as huggingface_hub makes them) for

    * ``repo_id``: ``open_clip_config.json``, the CLIP weights, ``vocab.txt``, ``tokenizer.json``,
      ``tokenizer_config.json``, ``special_tokens_map.json``;
    * ``text_model``: ``config.json``, ``vocab.txt``, ``tokenizer_config.json`` and, for shrunk
      replicas, ``model.safetensors`` (open_clip also loads the text tower's ``config.json`` and
      the tokenizer from this repo, never from ``repo_id``).

    Using it (huggingface_hub 1.x/2.x, transformers 5.x; both read the cache location and offline
    flag from ``huggingface_hub.constants``, which are set from the environment **at import**):

    * subprocess / before the first import: ``env = offline_hf_env(cache_dir)`` (sets
      ``HF_HUB_OFFLINE=1``, ``HF_HUB_CACHE=cache_dir``, and ``HF_HOME`` when ``cache_dir`` is
      named ``hub``; ``TRANSFORMERS_CACHE`` too, which only transformers 4.x reads);
    * in-process after import: ``use_hf_cache(monkeypatch, cache_dir)`` patches
      ``huggingface_hub.constants.HF_HUB_CACHE`` / ``HF_HUB_OFFLINE``.
    * ``cache_dir=`` of ``create_model_and_transforms`` is **not** enough: open_clip passes it for
      the CLIP repo files but not to ``AutoConfig.from_pretrained(hf_model_name)``.

    Args:
        cache_dir: the hub cache folder (what ``HF_HUB_CACHE`` names; ``$HF_HOME/hub`` by default).
        repo_id: the CLIP repo id to replicate.
        shrink: tiny towers or the real architecture sizes (``shrink=False`` with ``with_weights``
            writes a 0.8 GB file; without weights the text tower has none either, so build with
            ``pretrained_text=False``).
        with_weights: write the CLIP weights (random, seeded).
        weights_format: ``"bin"``: ``open_clip_pytorch_model.bin`` (a plain ``torch.save`` state
            dict, loadable with ``weights_only=True``), the file the hub repo has; open_clip first
            asks for ``open_clip_model.safetensors``, which offline is a quiet cache miss.
            ``"safetensors"``: ``open_clip_model.safetensors``.
        text_model: the text tower's hub id written into the config and the cache.
        seed: torch seed of the random weights.

    Returns:
        The CLIP repo's snapshot folder (``.../snapshots/<commit>``).

    Raises:
        ValueError: for an unknown ``weights_format``.
    """
    import tempfile

    if weights_format not in ("bin", "safetensors"):
        raise ValueError(f"weights_format expected 'bin' or 'safetensors', found {weights_format!r}")
    cache_dir = Path(cache_dir).absolute()
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="medcl-replica-") as tmp:
        tmp = Path(tmp)
        text_dir = write_text_tower(tmp / "text", shrink=shrink, seed=seed)
        _write_cached_repo(cache_dir, text_model, _read_folder(text_dir), commit_seed=f"text:{shrink}:{seed}")
        config = biomedclip_config(shrink, text_model=text_model)
        clip_dir = tmp / "clip"
        write_tokenizer_files(clip_dir, full=True)
        _dump_json(clip_dir / "open_clip_config.json", config)
        if with_weights:
            name = CLIP_BIN_WEIGHTS if weights_format == "bin" else CLIP_SAFE_WEIGHTS
            _save_clip_weights(_random_clip_state_dict(config, text_dir, seed), clip_dir / name)
        return _write_cached_repo(cache_dir, repo_id, _read_folder(clip_dir), commit_seed=f"clip:{shrink}:{seed}")


def offline_hf_env(cache_dir: PathLike, base: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """Environment for a subprocess that reads the hub cache ``cache_dir`` and never goes online.

    Args:
        cache_dir: a folder filled by :func:`fill_hf_cache`.
        base: environment to start from (default ``os.environ``); other ``HF_*`` cache variables in
            it are replaced so nothing points at a real cache.

    Returns:
        A new dict with ``HF_HUB_OFFLINE=1``, ``TRANSFORMERS_OFFLINE=1``, ``HF_HUB_CACHE``,
        ``HUGGINGFACE_HUB_CACHE`` and ``TRANSFORMERS_CACHE`` set to ``cache_dir``, ``HF_HOME`` set to
        its parent when ``cache_dir`` is named ``hub`` (else removed, so ``~/.cache/huggingface``
        is only read for a token), and ``HF_HUB_DISABLE_TELEMETRY=1``.
    """
    cache_dir = Path(cache_dir).absolute()
    env = dict(os.environ if base is None else base)
    for key in ("HF_HOME", "HF_ENDPOINT", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "PYTORCH_TRANSFORMERS_CACHE"):
        env.pop(key, None)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
        HF_HUB_CACHE=str(cache_dir),
        HUGGINGFACE_HUB_CACHE=str(cache_dir),
        TRANSFORMERS_CACHE=str(cache_dir),
    )
    if cache_dir.name == "hub":
        env["HF_HOME"] = str(cache_dir.parent)
    return env


def use_hf_cache(monkeypatch, cache_dir: PathLike) -> None:
    """Point the already-imported huggingface_hub at ``cache_dir``, offline, for one test.

    huggingface_hub reads ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE`` into ``huggingface_hub.constants``
    at import, and transformers and open_clip look them up there at call time, so patching those
    attributes (undone by ``monkeypatch`` at teardown) is enough; the environment variables are
    set too, for code that reads them or starts subprocesses.

    Args:
        monkeypatch: the pytest fixture.
        cache_dir: a folder filled by :func:`fill_hf_cache`.
    """
    from huggingface_hub import constants

    cache_dir = str(Path(cache_dir).absolute())
    monkeypatch.setattr(constants, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(constants, "HUGGINGFACE_HUB_CACHE", cache_dir, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    for key, value in (("HF_HUB_OFFLINE", "1"), ("HF_HUB_CACHE", cache_dir), ("TRANSFORMERS_CACHE", cache_dir)):
        monkeypatch.setenv(key, value)
    try:  # transformers 4.x kept its own copies
        import transformers.utils.hub as transformers_hub
    except ImportError:
        return
    for name, value in (("TRANSFORMERS_CACHE", cache_dir), ("PYTORCH_TRANSFORMERS_CACHE", cache_dir),
                        ("PYTORCH_PRETRAINED_BERT_CACHE", cache_dir), ("_is_offline_mode", True)):
        if hasattr(transformers_hub, name) and not callable(getattr(transformers_hub, name)):
            monkeypatch.setattr(transformers_hub, name, value)
