"""Write what ``medcl pretrain`` produces: a weights file that ``pretrained:`` loads, and its model card."""
from __future__ import annotations

import json
import logging
import platform
import sys
from pathlib import Path
from typing import Any, Dict, Optional

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from framework.backbone.weights_file import save_weights

__all__ = ["ExportPretrainedWeights", "WEIGHTS_FILE", "cpu_name"]

log = logging.getLogger(__name__)

WEIGHTS_FILE = "open_clip_weights.safetensors"


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one), for results that depend on it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class ExportPretrainedWeights(pl.Callback):
    """At the end of a finished ``medcl pretrain`` fit: score zero-shot on the data module's test tasks and
    write ``<run folder>/pretrained/open_clip_weights.safetensors`` and ``model_card.json``.

    A frozen Hugging Face text transformer that kept its own public weights is left out of the file
    (filled in again at load time, checked by checksum), so a tiny model stays a few MB.

    Args:
        folder: subfolder of the run folder to write into.
    """

    def __init__(self, folder: str = "pretrained") -> None:
        self.folder = folder
        self.written: Optional[Path] = None

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.interrupted or trainer.sanity_checking:
            return
        datamodule = trainer.datamodule
        tasks = list(getattr(datamodule, "zero_shot_tasks", []) or [])
        scores = pl_module.zero_shot_scores(datamodule.test_dataloader(), tasks) if tasks else {}
        # trainer.log_dir broadcasts from rank 0 under DDP: every rank must ask, not only the writer
        out = Path(trainer.log_dir or trainer.default_root_dir) / self.folder
        if not trainer.is_global_zero:
            return
        backbone = pl_module.backbone
        text_frozen = not any(p.requires_grad for name, p in backbone.clip.named_parameters() if name.startswith("text.transformer."))
        omit = bool(backbone.text_weights_loaded and text_frozen and hasattr(getattr(backbone.clip, "text", None), "transformer"))
        card: Dict[str, Any] = {
            "backbone": pl_module.hparams.backbone,
            "started_from": pl_module.hparams.pretrained,
            "pretraining_domains": list(getattr(datamodule, "pretraining_domains", [])),
            "zero_shot_test_accuracy": {k: round(v, 4) for k, v in scores.items()},
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "seed": _seed(),
            "text_tower": "frozen at its own weights, not stored (filled in at load time)" if omit else "stored",
            "command": " ".join(["medcl", *sys.argv[1:]]) if Path(sys.argv[0]).name == "medcl" else None,
            "machine": f"{cpu_name()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}",
        }
        target, card_file = out / WEIGHTS_FILE, out / "model_card.json"
        if target.exists():  # a resumed run whose earlier part already finished: never overwrite, name this one by its step
            target = out / f"{target.stem}-step{trainer.global_step}{target.suffix}"
            card_file = out / f"model_card-step{trainer.global_step}.json"
        path = save_weights(
            backbone.clip, target, omit_text_transformer=omit,
            text_name=Path(str(backbone.architecture.text_weights)).name if omit else None,
            metadata={"model_card": card},
        )
        card_file.write_text(json.dumps(card, indent=2) + "\n")
        self.written = path
        self.card = card
        size = path.stat().st_size / 2**20
        rank_zero_info(
            f"medcl pretrain: wrote {path} ({size:.1f} MiB; start a MedCL run from it with pretrained: {path})"
            + "".join(f"\n  zero-shot test accuracy {k}: {v:.4f}" for k, v in scores.items())
        )


def _seed() -> Optional[int]:
    from framework.core.seeding import run_seed

    return run_seed()
