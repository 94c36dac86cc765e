"""Domain-specific batch normalisation (DSBN, Chang et al., CVPR 2019) for BatchNorm image towers.

Joint training of a BatchNorm tower (a ResNet) on several datasets normalises every dataset with
one set of running statistics, a mixture that fits none of them: in MedCL's joint ResNet-18 on
Blood + OrganA + Pneumonia + Retina, BloodMNIST scored 0.18 (published 0.96).  With
``domain_batchnorm: true`` every task gets its own copy of each BatchNorm layer of the image tower
(statistics and affine parameters, initialised from the tower's own), routed by the task exactly
like the modality adapters (:meth:`framework.model.MedCLModel.route`); everything else in the tower
stays shared.  The copies live in the tower, so they are in every checkpoint and rebuilt, task by
task, before strict loading.

torch and timm offer no per-domain BatchNorm; this module is small on purpose: a wrapper that
holds the tower's original layer (``shared``, its state-dict names gain ``.shared``) and one copy
per task (``domains.<task>``).
"""
from __future__ import annotations

import contextlib
import copy
from typing import Iterator, List, Optional

from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["DomainBatchNorm", "DomainNorms"]


class DomainBatchNorm(nn.Module):
    """One BatchNorm layer with a copy per domain; the active domain's copy normalises.

    Args:
        shared: the tower's original layer (used when no domain with a copy is active).
    """

    def __init__(self, shared: _BatchNorm) -> None:
        super().__init__()
        self.shared = shared
        self.domains = nn.ModuleDict()
        self.active: Optional[str] = None

    def add(self, domain: str) -> None:
        """Give ``domain`` its own copy, initialised from the shared layer."""
        self.domains[domain] = copy.deepcopy(self.shared)

    def forward(self, x: Tensor) -> Tensor:
        layer = self.domains[self.active] if self.active is not None and self.active in self.domains else self.shared
        return layer(x)


def _install(module: nn.Module) -> List[DomainBatchNorm]:
    """Replace every BatchNorm layer under ``module`` by a :class:`DomainBatchNorm` around it."""
    out = []
    for name, child in list(module.named_children()):
        if isinstance(child, _BatchNorm):
            wrapped = DomainBatchNorm(child)
            setattr(module, name, wrapped)
            out.append(wrapped)
        elif not isinstance(child, DomainBatchNorm):
            out.extend(_install(child))
    return out


class DomainNorms:
    """The per-task BatchNorm copies of one image tower, and the routing between them.

    Installed lazily, when the first task is added (pretrained weights load into the tower's own
    layer names before that).

    Args:
        tower: the image tower (not registered as a child: the layers are already its own).

    Raises:
        ValueError: if the tower has no BatchNorm layer.
    """

    def __init__(self, tower: nn.Module) -> None:
        self._tower = [tower]
        self.layers: List[DomainBatchNorm] = []
        self.domains: List[str] = []
        if not any(isinstance(m, _BatchNorm) for m in tower.modules()):
            raise ValueError(
                f"domain_batchnorm: the image tower ({type(tower).__name__}) has no BatchNorm layer; per-domain "
                f"normalisation is for BatchNorm towers such as medcl-resnet18-tiny (ViTs use LayerNorm, per sample)"
            )

    def __contains__(self, domain: str) -> bool:
        return domain in self.domains

    def add(self, domain: str) -> None:
        """Give ``domain`` its own copy of every BatchNorm layer (idempotent)."""
        if not self.layers:
            self.layers = _install(self._tower[0])
        if domain in self.domains:
            return
        for layer in self.layers:
            layer.add(domain)
        self.domains.append(domain)

    def modules(self, domain: str) -> List[nn.Module]:
        """``domain``'s BatchNorm copies."""
        return [layer.domains[domain] for layer in self.layers if domain in layer.domains]

    def parameters(self, domain: str) -> List[nn.Parameter]:
        """``domain``'s affine parameters."""
        return [p for module in self.modules(domain) for p in module.parameters()]

    def all_parameters(self) -> List[nn.Parameter]:
        return [p for domain in self.domains for p in self.parameters(domain)]

    @contextlib.contextmanager
    def use(self, domain: Optional[str]) -> Iterator[None]:
        """Normalise with ``domain``'s copies for the duration of the block (the shared layers for a
        domain without copies)."""
        previous = [layer.active for layer in self.layers]
        for layer in self.layers:
            layer.active = domain
        try:
            yield
        finally:
            for layer, active in zip(self.layers, previous):
                layer.active = active
