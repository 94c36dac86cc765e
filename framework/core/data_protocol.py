"""What ``framework/`` asks of a trainer's datamodule, by protocol (``framework/`` never imports ``data_modules/``).

A datamodule MedCL trains on exposes ``task_specs``; a stream also ``domain(task)`` (the data module
serving one task, with ``loader(split, keyed=..., shuffle=...)``); either may expose
``single_sample_last_batches()`` for the BatchNorm pre-flight check.  ``data_modules.DomainStream``
and ``data_modules.DomainDataModule`` implement all of it; a user's own datamodule may too.
"""
from __future__ import annotations

from typing import Any, List

__all__ = ["domain_for", "single_sample_last_batches", "ROUTED_KEY"]


def domain_for(datamodule: Any, task: str, purpose: str) -> Any:
    """The data module serving ``task`` in a trainer's datamodule (a stream, or a single domain).

    Raises:
        ValueError: ``"<purpose> needs ..."`` naming the task and the datamodule found.
    """
    if hasattr(datamodule, "domain"):
        return datamodule.domain(task)
    if getattr(datamodule, "name", None) == task and hasattr(datamodule, "loader"):
        return datamodule
    raise ValueError(
        f"{purpose} needs task {task!r}'s training data from trainer.datamodule (a data_modules.DomainStream or "
        f"DomainDataModule), found {type(datamodule).__name__}"
    )


def single_sample_last_batches(datamodule: Any) -> List[str]:
    """The datamodule's training domains whose last training batch holds exactly one sample (see
    ``DomainDataModule.single_sample_last_batches``); none for a datamodule without the method."""
    fn = getattr(datamodule, "single_sample_last_batches", None)
    return list(fn()) if callable(fn) else []


#: the batch key of images to predict *without* a task (``medcl predict`` with a task router): the
#: model routes each image and predicts every task of its source.  No task name can take it (task
#: names start with a letter).  Items: ``{"image": router view, "views": {task: that task's view}, "id": ...}``.
ROUTED_KEY = "__routed__"
