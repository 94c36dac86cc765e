"""A storage policy's decisions for one offered batch (:class:`BatchPlan`), executed by the buffer's ``commit``."""
from __future__ import annotations

import bisect
from typing import TYPE_CHECKING, Dict, List, Optional, Set, Tuple

import torch

if TYPE_CHECKING:  # pragma: no cover
    from framework.replay.buffer import ReplayBuffer

__all__ = ["BatchPlan", "Uniforms"]


class Uniforms:
    """Uniform draws from a generator, fetched in chunks (one tensor call per chunk)."""

    def __init__(self, generator: torch.Generator, chunk: int) -> None:
        self.generator = generator
        self.chunk = max(int(chunk), 16)
        self.values: List[float] = []
        self.next = 0

    def below(self, m: int) -> int:
        """A uniform integer in ``[0, m)``."""
        if self.next == len(self.values):
            self.values = torch.rand(self.chunk, dtype=torch.float64, generator=self.generator).tolist()
            self.next = 0
        u = self.values[self.next]
        self.next += 1
        return min(int(u * m), m - 1)


class BatchPlan:
    """A policy's decisions for one offered batch of ``task``, executed by :meth:`ReplayBuffer.commit`.

    Destinations are rows of ``task``: rows below :attr:`base` overwrite stored samples, rows from
    :attr:`base` on are appended (contiguously).  A later incoming sample may take an earlier
    one's destination (it then replaces that sample, as in the sequential algorithm).  Samples of
    other tasks are evicted with :meth:`evict`; ``task``'s own samples are overwritten, never
    evicted, so the destinations stay valid.

    Attributes:
        rand: uniform draws from the buffer's generator (``rand.below(m)``).
    """

    def __init__(self, buffer: "ReplayBuffer", task: Optional[str], n: int) -> None:
        store = buffer.store(task) if task is not None else None
        self.task = task
        self.base = store.size if store is not None else 0
        self.appended = 0
        self.dest: Dict[int, int] = {}
        self.evicted: Dict[str, Set[int]] = {}
        self.n_evicted = 0
        self.rand = Uniforms(buffer.generator, n)
        self._others = [(t, n) for t, n in buffer.counts().items() if t != task]
        self._starts: List[int] = []
        total = 0
        for _, size in self._others:
            self._starts.append(total)
            total += size
        self.n_other = total

    @property
    def members(self) -> int:
        """Samples ``task`` holds now, this batch's placements included."""
        return self.base + self.appended

    @property
    def total(self) -> int:
        """Samples the buffer holds now, this batch's decisions included."""
        return self.n_other - self.n_evicted + self.members

    def place(self, i: int, row: int) -> None:
        """Incoming sample ``i`` replaces whatever holds ``row`` of ``task`` (a stored row or an appended one)."""
        self.dest[row] = i

    def append(self, i: int) -> int:
        """Incoming sample ``i`` takes a new row of ``task``; returns that row."""
        row = self.base + self.appended
        self.appended += 1
        self.dest[row] = i
        return row

    def evict(self, task: str, row: int) -> None:
        """Remove the stored ``row`` of another task."""
        rows = self.evicted.setdefault(task, set())
        if row not in rows:
            rows.add(row)
            self.n_evicted += 1

    def random_other(self) -> Tuple[str, int]:
        """A uniformly random stored sample of the other tasks that is not evicted yet.

        Rejection sampling over the other tasks' samples (expected draws <= 2), or, when more than
        half of them are evicted, a draw among the O(batch) survivors.
        """
        alive = self.n_other - self.n_evicted
        if alive <= 0:
            raise RuntimeError("BatchPlan.random_other: no sample of another task is left")
        if self.n_evicted * 2 <= self.n_other:
            while True:
                task, row = self._locate(self.rand.below(self.n_other))
                if row not in self.evicted.get(task, ()):
                    return task, row
        survivors = [(t, r) for t, size in self._others for r in range(size) if r not in self.evicted.get(t, ())]
        return survivors[self.rand.below(len(survivors))]

    def _locate(self, index: int) -> Tuple[str, int]:
        k = bisect.bisect_right(self._starts, index) - 1
        return self._others[k][0], index - self._starts[k]
