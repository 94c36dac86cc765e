"""What ``medcl`` prints: MedCL's own lines, not the noise of the libraries under it.

Each filter drops one known message that is wrong or useless for a MedCL run, and nothing else:

* open_clip's ``No pretrained weights loaded for model ... initialized randomly`` (printed for every
  tower built, twice per run and also when testing a trained checkpoint, whose weights come from
  the checkpoint); ``pretrained: null`` in the config already says it;
* open_clip's ``Model ... initialized partially`` (a Hugging Face text tower loaded with its own weights
  and a new image tower: what MedCL asks for);
* transformers' load report of a text tower whose only unused keys are its unused ``pooler.dense``
  layer (open_clip pools the tokens itself, e.g. MiniLM's mean pooling); any other report is kept;
* Lightning's "Found N module(s) in eval mode at the start of training": MedCL keeps frozen parts in
  eval mode on purpose (a frozen text tower's dropout, a frozen image tower's BatchNorm statistics);
* Lightning's ``litlogger`` advertisement;
* Lightning's own ``isinstance(treespec, LeafSpec)`` deprecation, raised inside Lightning.

Lightning's model summary table is off by default (``trainer.enable_model_summary: false``, set
in :class:`framework.cli.MedCLCLI`): its parameter count is taken before the heads grow and its
FLOPs column reads 0; MedCL prints the trainable parameters of every experience instead.
W&B's "The anonymous setting has no effect" warning is not filtered: Lightning's ``WandbLogger``
always passes that setting and W&B prints the warning itself, outside Python's logging.
"""
from __future__ import annotations

import logging
import warnings

__all__ = ["quiet_known_noise"]

_DROPPED = {
    "": ("No pretrained weights loaded for model", "initialized partially."),  # open_clip logs through the root logger
    "pytorch_lightning.utilities.rank_zero": ("litlogger",),
    "lightning.pytorch.utilities.rank_zero": ("litlogger",),
}


class _Drop(logging.Filter):
    def __init__(self, fragments) -> None:
        super().__init__()
        self.fragments = tuple(fragments)

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(fragment in message for fragment in self.fragments)


class _UnusedPoolerReport(logging.Filter):
    """Drops transformers' load report when its only entries are an unused ``pooler.dense`` layer."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "LOAD REPORT" not in message:
            return True
        entries = [line.split("|")[0].strip() for line in message.splitlines() if "|" in line and ("UNEXPECTED" in line or "MISSING" in line)]
        return not (entries and all(entry.startswith("pooler.dense.") for entry in entries))


def quiet_known_noise() -> None:
    """Install the filters (idempotent)."""
    for name, fragments in _DROPPED.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(fragments))
    for name in ("transformers.modeling_utils", "transformers.utils.loading_report"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _UnusedPoolerReport) for f in logger.filters):
            logger.addFilter(_UnusedPoolerReport())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
