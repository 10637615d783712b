"""Projection heads: backbone features -> the space the contrastive loss compares."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ProjectionHead(nn.Module):
    """``Linear(in, hidden) -> [BatchNorm] -> ReLU -> [Dropout] -> Linear(hidden, out)``, then L2-normalised.

    ``(B, in_dim) -> (B, out_dim)`` with unit rows. SimCLR (Chen et al., 2020, https://arxiv.org/abs/2002.05709)
    showed the loss is best applied after such a non-linear projection, and features taken before it.
    """

    def __init__(self, in_dim: int = 512, hidden_dim: int = 256, out_dim: int = 64, dropout: float = 0.0,
                 batchnorm: bool = False):
        super().__init__()
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim, bias=not batchnorm)]
        if batchnorm:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.ReLU(inplace=True))
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers.append(nn.Linear(hidden_dim, out_dim))
        self.net = nn.Sequential(*layers)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.net(h), dim=1)  # (B, out_dim), unit rows
