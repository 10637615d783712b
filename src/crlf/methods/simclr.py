"""SimCLR's NT-Xent loss (Chen et al., 2020, https://arxiv.org/abs/2002.05709)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross entropy over ``2N`` views.

    For each of the ``2N`` embeddings the positive is the other view of the same image and the
    negatives are the remaining ``2N - 2`` embeddings of the batch. Computed in fp32 whatever the
    autocast dtype: a temperature of 0.07 turns bf16 rounding of the similarities into loss noise.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """``z1``, ``z2``: ``(N, D)`` embeddings of the two views (need not be normalised) -> scalar loss."""
        if z1.shape != z2.shape or z1.dim() != 2:
            raise ValueError(f"z1 and z2 must both be (N, D); got {tuple(z1.shape)} and {tuple(z2.shape)}")
        n = z1.shape[0]
        with torch.autocast(z1.device.type, enabled=False):  # inside an autocast region too: matmul in fp32
            z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # (2N, D)
            logits = z @ z.T / self.temperature  # (2N, 2N) cosine similarities / T
            logits.fill_diagonal_(float("-inf"))  # a view is not its own negative
            targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # (2N,) index of the positive
            return F.cross_entropy(logits, targets)
