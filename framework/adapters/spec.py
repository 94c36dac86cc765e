"""AdapterSpec: what a modality adapter is made of, stored in checkpoints like task specs."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any, Dict, Mapping, Optional

__all__ = ["AdapterSpec", "LORA_KEYS", "check_lora_options"]

#: LoRA options a config may set (peft ``LoraConfig`` names, ``alpha`` for ``lora_alpha``)
LORA_KEYS = ("r", "alpha", "dropout", "target_modules")
CHANNEL_INITS = ("first", "mean")


def check_lora_options(options: Optional[Mapping[str, Any]], owner: str) -> Optional[Dict[str, Any]]:
    """Validate a LoRA option mapping (``None`` = no LoRA).

    Raises:
        ValueError: naming the option, what was expected and what was found.
    """
    if options is None:
        return None
    if not isinstance(options, Mapping):
        raise ValueError(f"{owner}: lora expected null or a mapping with keys {list(LORA_KEYS)}, found {options!r}")
    unknown = sorted(set(options) - set(LORA_KEYS))
    if unknown:
        raise ValueError(f"{owner}: lora has unknown option(s) {unknown}; known options are {list(LORA_KEYS)}")
    out = {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": None, **dict(options)}
    for key in ("r", "alpha"):
        value = out[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{owner}: lora.{key} expected a positive integer, found {value!r}")
    if not isinstance(out["dropout"], (int, float)) or isinstance(out["dropout"], bool) or not 0 <= out["dropout"] < 1:
        raise ValueError(f"{owner}: lora.dropout expected a number in [0, 1), found {out['dropout']!r}")
    targets = out["target_modules"]
    if targets is not None and not isinstance(targets, str) and not (
        isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) and t for t in targets)
    ):
        raise ValueError(f"{owner}: lora.target_modules expected null, a regex or a list of module names, found {targets!r}")
    if isinstance(targets, tuple):
        out["target_modules"] = list(targets)
    out["dropout"] = float(out["dropout"])
    return out


@dataclass(frozen=True)
class AdapterSpec:
    """One modality's adapters on the image tower.

    Args:
        modality: the modality it serves (a task's ``TaskSpec.modality``).
        in_channels: channels of the modality's images.  Anything but 1 or 3 gets its own patch
            embedding (the tower's first convolution), initialised from the existing one.
        channel_init: how a new patch embedding starts: ``"first"`` puts the old (grayscale) filter
            on channel 0 and zeros on the others, so the model starts exactly as it was on the first
            channel and learns what the extra channels add; ``"mean"`` spreads the old filter over
            all channels (for channels of equal standing, e.g. dual-energy CT).
        lora: LoRA options (``r``, ``alpha``, ``dropout``, ``target_modules``) or ``None`` for no LoRA.

    Raises:
        ValueError: on an invalid field (the message names it).
    """

    modality: str
    in_channels: int = 3
    channel_init: str = "first"
    lora: Optional[Dict[str, Any]] = None

    def __post_init__(self) -> None:
        where = f"AdapterSpec '{self.modality}'"
        if not isinstance(self.modality, str) or not self.modality:
            raise ValueError(f"AdapterSpec: field 'modality' expected a non-empty string, found {self.modality!r}")
        if isinstance(self.in_channels, bool) or not isinstance(self.in_channels, int) or self.in_channels < 1:
            raise ValueError(f"{where}: field 'in_channels' expected a positive integer, found {self.in_channels!r}")
        if self.channel_init not in CHANNEL_INITS:
            raise ValueError(f"{where}: field 'channel_init' expected one of {list(CHANNEL_INITS)}, found {self.channel_init!r}")
        object.__setattr__(self, "lora", check_lora_options(self.lora, where))
        if not self.needs_patch_embedding and self.lora is None:
            raise ValueError(f"{where}: an adapter needs LoRA options or in_channels other than 1 and 3; found neither")

    @property
    def needs_patch_embedding(self) -> bool:
        return self.in_channels not in (1, 3)

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str) -> "AdapterSpec":
        """Rebuild from :meth:`to_dict` output.

        Raises:
            ValueError: on unknown or missing fields, naming ``source``.
        """
        known = {f.name for f in fields(cls)}
        if not isinstance(data, Mapping) or "modality" not in data or set(data) - known:
            raise ValueError(f"{source}: expected an adapter spec with fields {sorted(known)} ('modality' required), found {data!r}")
        return cls(**dict(data))
