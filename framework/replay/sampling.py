"""Drawing replay batches from the stored samples (uniformly, or balanced over tasks)."""
from __future__ import annotations

import bisect
from typing import Dict, List, Mapping, Optional, Sequence, Set

import torch
from torch import Tensor

from framework.replay.storage import TaskStore

__all__ = ["BALANCE_MODES", "choose", "draw"]

#: ``balance`` values accepted by :func:`draw`
BALANCE_MODES = ("uniform", "task")


def choose(generator: torch.Generator, m: int, k: int) -> List[int]:
    """``k`` distinct uniform integers of ``[0, m)`` (Floyd's algorithm: O(k), not O(m))."""
    if k >= m:
        return list(range(m))
    if k <= 0:
        return []
    u = torch.rand(k, dtype=torch.float64, generator=generator).tolist()
    chosen: Set[int] = set()
    out = []
    for step, j in enumerate(range(m - k, m)):
        t = min(int(u[step] * (j + 1)), j)
        if t in chosen:
            t = j
        chosen.add(t)
        out.append(t)
    return out


def draw(stores: Mapping[str, TaskStore], generator: torch.Generator, n: int, exclude: Sequence[str] = (), balance: str = "uniform", max_tasks: Optional[int] = None) -> Dict[str, Dict[str, Tensor]]:
    """Draw up to ``n`` distinct stored samples of the tasks not in ``exclude``.

    Args:
        n: how many to draw.
        exclude: tasks to skip (those of the current batch).
        balance: ``"uniform"``: every eligible stored sample is equally likely; ``"task"``: each
            eligible task gets an equal share of the ``n`` draws (the remainder goes to random
            tasks), drawn uniformly from its samples and capped by what it holds.
        max_tasks: draw from at most this many eligible tasks, chosen uniformly at random
            (``balance`` then applies among them); ``None``: every eligible task.  Each task in a
            batch costs the model one forward/backward pass, so this keeps a step's cost flat
            as tasks accumulate.  The draw is still capped by what the chosen tasks hold.

    Returns:
        ``{task: {"image": (k, ...), "target": (k, ...)}}`` (copies, in the stored dtype) for
        the tasks drawn, in the buffer's task order.

    Raises:
        ValueError: on a negative ``n``, an unknown ``balance`` or a ``max_tasks`` below 1.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"ReplayBuffer.sample: n expected an integer >= 0, found {n!r}")
    if max_tasks is not None and (isinstance(max_tasks, bool) or not isinstance(max_tasks, int) or max_tasks < 1):
        raise ValueError(f"ReplayBuffer.sample: max_tasks expected an integer >= 1 or None, found {max_tasks!r}")
    if balance not in BALANCE_MODES:
        raise ValueError(f"ReplayBuffer.sample: balance expected one of {list(BALANCE_MODES)}, found {balance!r}")
    excluded = set(exclude)
    eligible = [(t, s) for t, s in stores.items() if s.size and t not in excluded]
    if not eligible or n == 0:
        return {}
    if max_tasks is not None and len(eligible) > max_tasks:  # (choose() draws nothing when the cap does not bind)
        eligible = [eligible[k] for k in sorted(choose(generator, len(eligible), max_tasks))]
    rows: Dict[str, List[int]] = {}
    if balance == "uniform":
        starts, total = [], 0
        for _, store in eligible:
            starts.append(total)
            total += store.size
        for index in choose(generator, total, min(n, total)):
            k = bisect.bisect_right(starts, index) - 1
            rows.setdefault(eligible[k][0], []).append(index - starts[k])
    else:
        share, extra = divmod(n, len(eligible))
        lucky = set(choose(generator, len(eligible), extra))
        for k, (task, store) in enumerate(eligible):
            picks = choose(generator, store.size, min(share + (k in lucky), store.size))
            if picks:
                rows[task] = picks
    out = {}
    for task, store in eligible:
        if task in rows:
            index = torch.tensor(sorted(rows[task]), dtype=torch.long)
            out[task] = store.select(index)
    return out
