"""Herding selection of exemplars (Welling 2009; iCaRL, Rebuffi et al. 2017)."""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["herding_order"]


def herding_order(features: Tensor, k: int) -> Tensor:
    """Indices of ``k`` samples in herding order.

    Features are L2-normalised; the ``t``-th pick is the sample (not yet picked) whose addition
    brings the mean of the picks closest to the mean of all normalised features, so the first pick
    is the sample nearest that mean and every prefix of the order is a good small exemplar set.
    Ties go to the lower index.

    Args:
        features: ``(n, d)`` features of the ``n`` candidates.
        k: how many to pick; at most ``n``.

    Returns:
        ``(k,)`` LongTensor of distinct row indices of ``features``.

    Raises:
        ValueError: if ``features`` is not 2-D, holds non-finite values, or ``k`` is not an integer in ``[0, n]``.
    """
    if not isinstance(features, Tensor) or features.ndim != 2:
        raise ValueError(f"herding_order: features expected a 2-D tensor (n, d), found {getattr(features, 'shape', type(features).__name__)}")
    n = features.shape[0]
    if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= n:
        raise ValueError(f"herding_order: k expected an integer in [0, {n}] (the number of candidates), found {k!r}")
    if k == 0:
        return torch.empty(0, dtype=torch.long)
    feats = torch.nn.functional.normalize(features.detach().to(torch.float64), dim=1)
    if not torch.isfinite(feats).all():
        raise ValueError("herding_order: features expected finite values, found NaN or inf")
    mean = feats.mean(dim=0)
    running = torch.zeros_like(mean)
    taken = torch.zeros(n, dtype=torch.bool)
    order = []
    for t in range(1, k + 1):
        # distance between the target mean and the mean of the picks if sample i were added
        dist = ((mean - (running + feats) / t) ** 2).sum(dim=1)
        dist[taken] = float("inf")
        i = int(torch.argmin(dist))
        order.append(i)
        taken[i] = True
        running += feats[i]
    return torch.tensor(order, dtype=torch.long)
