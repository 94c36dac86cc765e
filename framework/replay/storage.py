"""One task's rehearsal storage: preallocated tensors, one per field, on the CPU.

Every stored sample has the fields ``image`` and ``target`` and whatever else a strategy stores
with it (DER++ its logits); each field is a ``(rows, *shape)`` tensor in the dtype the data came
in (uint8 images stay uint8).  Rows ``0 .. size-1`` are valid.
"""
from __future__ import annotations

import math
from typing import Dict, Mapping

from torch import Tensor

__all__ = ["TaskStore", "sample_bytes", "REQUIRED_FIELDS"]

#: fields every stored sample has
REQUIRED_FIELDS = ("image", "target")


def sample_bytes(fields: Mapping[str, Tensor]) -> int:
    """Bytes of one sample of a batch ``{field: (n, *shape)}``."""
    return sum(math.prod(t.shape[1:]) * t.element_size() for t in fields.values())


class TaskStore:
    """One task's preallocated storage; rows ``0 .. size-1`` are valid."""

    __slots__ = ("fields", "size")

    def __init__(self, fields: Dict[str, Tensor], size: int) -> None:
        self.fields, self.size = fields, size

    @classmethod
    def like(cls, batch: Mapping[str, Tensor]) -> "TaskStore":
        return cls({k: v.new_empty((0, *v.shape[1:]), device="cpu") for k, v in batch.items()}, 0)

    @property
    def images(self) -> Tensor:
        return self.fields["image"]

    @property
    def targets(self) -> Tensor:
        return self.fields["target"]

    @property
    def rows(self) -> int:
        return self.images.shape[0]

    @property
    def sample_bytes(self) -> int:
        return sample_bytes(self.fields)

    def nbytes(self) -> int:
        """Bytes allocated (stored samples and room to grow)."""
        return sum(t.nbytes for t in self.fields.values())

    def resize(self, rows: int) -> None:
        """Reallocate to ``rows`` rows (>= size), keeping the stored samples."""
        for key, old in self.fields.items():
            new = old.new_empty((rows, *old.shape[1:]))
            new[: self.size] = old[: self.size]
            self.fields[key] = new

    def write(self, rows: Tensor, batch: Mapping[str, Tensor], index: Tensor) -> None:
        """Copy ``batch[field][index]`` into ``rows`` of every field (to the CPU)."""
        for key, store in self.fields.items():
            values = batch[key]
            store.index_copy_(0, rows, values.index_select(0, index.to(values.device)).to("cpu"))

    def move(self, holes: Tensor, movers: Tensor) -> None:
        """Copy rows ``movers`` into rows ``holes`` of every field."""
        for store in self.fields.values():
            store.index_copy_(0, holes, store.index_select(0, movers))

    def select(self, index: Tensor) -> Dict[str, Tensor]:
        """Copies of the rows ``index`` of every field."""
        return {key: store.index_select(0, index) for key, store in self.fields.items()}

    def view(self) -> Dict[str, Tensor]:
        """Views of the stored rows of every field."""
        return {key: store[: self.size] for key, store in self.fields.items()}
