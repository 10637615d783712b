"""Heads on top of the backbone: projectors and predictors, as small MLPs.

``(B, in_dim) -> (B, out_dim)``. SimCLR (Chen et al., 2020, https://arxiv.org/abs/2002.05709) showed a
contrastive loss is best applied after a non-linear projection and the features taken before it; every
method here follows that, and the predictors of BYOL, SimSiam and MoCo v3 are the same kind of MLP.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = {"relu": lambda: nn.ReLU(inplace=True), "gelu": nn.GELU}


def mlp(in_dim: int, hidden_dim: int, out_dim: int, layers: int = 2, batchnorm: bool = False,
        last_batchnorm: bool = False, dropout: float = 0.0, activation: str = "relu") -> nn.Sequential:
    """``layers`` linear layers: ``[Linear -> (BatchNorm) -> act -> (Dropout)] x (layers - 1) -> Linear``
    (``-> BatchNorm without affine`` with ``last_batchnorm``, as SimSiam and MoCo v3 end their projectors).

    A linear layer followed by BatchNorm has no bias (BatchNorm's shift makes it redundant)."""
    if layers < 1:
        raise ValueError(f"layers must be >= 1, got {layers}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    modules: list[nn.Module] = []
    width = in_dim
    for _ in range(layers - 1):
        modules.append(nn.Linear(width, hidden_dim, bias=not batchnorm))
        if batchnorm:
            modules.append(nn.BatchNorm1d(hidden_dim))
        modules.append(ACTIVATIONS[activation]())
        if dropout > 0:
            modules.append(nn.Dropout(dropout))
        width = hidden_dim
    modules.append(nn.Linear(width, out_dim, bias=not last_batchnorm))
    if last_batchnorm:
        modules.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*modules)


class ProjectionHead(nn.Module):
    """SimCLR's projector: an :func:`mlp` (2 layers by default: ``Linear(in, hidden) -> [BatchNorm] -> ReLU
    -> [Dropout] -> Linear(hidden, out)``), then L2-normalised: ``(B, in_dim) -> (B, out_dim)`` with unit rows."""

    def __init__(self, in_dim: int = 512, hidden_dim: int = 256, out_dim: int = 64, dropout: float = 0.0,
                 batchnorm: bool = False, layers: int = 2, last_batchnorm: bool = False, net: nn.Module | None = None):
        super().__init__()
        # ``net``: an MLP built elsewhere (SimCLR's, from the config); the sizes are then not used.
        self.net = net if net is not None else mlp(in_dim, hidden_dim, out_dim, layers, batchnorm, last_batchnorm,
                                                   dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(h), dim=1)  # (B, out_dim), unit rows
