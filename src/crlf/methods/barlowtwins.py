"""Barlow Twins (Zbontar, Jing, Misra, LeCun and Deny, 2021, https://arxiv.org/abs/2103.03230): drive the
cross-correlation matrix of the two branches' embeddings towards the identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from crlf.collectives import gather_with_grad
from crlf.config import Config
from crlf.methods.base import Method, apply_to_views, cross_view_pairs, embedding_spread, projector_from
from crlf.methods.settings import MethodSettings, check
from crlf.methods.vicreg import check_branches, off_diagonal

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class BarlowTwinsSettings(MethodSettings):
    """``redundancy_weight``: the off-diagonal terms' weight (lambda, 0.0051 in the paper's code);
    ``loss_scale``: a factor on the whole loss (solo-learn's CIFAR recipe: 0.1; it matters with LARS and weight
    decay, not with Adam)."""

    name: str = "barlowtwins"
    redundancy_weight: float = 0.0051
    loss_scale: float = 1.0

    def validate(self) -> None:
        super().validate()
        check(self.redundancy_weight >= 0, f"method.redundancy_weight must be >= 0 (got {self.redundancy_weight}).")
        check(self.loss_scale > 0, f"method.loss_scale must be > 0 (got {self.loss_scale}).")


class BarlowTwinsLoss(nn.Module):
    """``sum_i (1 - C_ii)^2 + redundancy_weight * sum_{i != j} C_ij^2``.

    ``z1, z2``: ``(B, D)`` embeddings of the same ``B`` images, ``B >= 2``. Each is standardised along the
    batch (mean 0, biased std 1, plus ``eps`` in the variance: the paper's code runs them through
    ``BatchNorm1d(D, affine=False)``), and ``C = z1_n^T z2_n / B`` is their ``(D, D)`` cross-correlation.
    ``redundancy_weight`` is the paper's lambda (0.0051 in its code). Computed in fp32 whatever the autocast
    dtype: the ``D^2`` squared correlations sum to thousands, where bf16 keeps about 3 significant digits.
    """

    def __init__(self, redundancy_weight: float = 0.0051, eps: float = 1e-5):
        super().__init__()
        if not redundancy_weight >= 0:
            raise ValueError(f"redundancy_weight must be >= 0, got {redundancy_weight}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.redundancy_weight = float(redundancy_weight)
        self.eps = float(eps)  # BatchNorm1d's default

    def _standardise(self, z: torch.Tensor) -> torch.Tensor:
        mean, var = z.mean(dim=0), z.var(dim=0, unbiased=False)  # (D,) each: BatchNorm's batch statistics
        return (z - mean) / torch.sqrt(var + self.eps)  # (B, D)

    def terms(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The unweighted ``(sum_i (1 - C_ii)^2, sum_{i != j} C_ij^2)``, fp32 scalars."""
        check_branches(z1, z2, "BarlowTwinsLoss")
        with torch.autocast(z1.device.type, enabled=False):  # inside an autocast region too: fp32
            z1, z2 = self._standardise(z1.float()), self._standardise(z2.float())  # (B, D) each
            c = z1.T @ z2 / z1.shape[0]  # (D, D) cross-correlation
            on_diagonal = (1 - c.diagonal()).pow(2).sum()
            redundancy = off_diagonal(c).pow(2).sum()
        return on_diagonal, redundancy

    def combine(self, on_diagonal: torch.Tensor, redundancy: torch.Tensor) -> torch.Tensor:
        return on_diagonal + self.redundancy_weight * redundancy

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """``z1, z2``: ``(B, D)`` -> scalar fp32 loss."""
        return self.combine(*self.terms(z1, z2))


class BarlowTwins(Method):
    """Backbone -> projector :func:`mlp` (the paper: 3 layers of 8192 with BatchNorm; CIFAR benchmarks 2048)
    -> :class:`BarlowTwinsLoss` averaged over :func:`cross_view_pairs` (multi-crop: each view against each
    global one)."""

    name = "barlowtwins"
    settings_type = BarlowTwinsSettings
    title, paper = "Barlow Twins", "https://arxiv.org/abs/2103.03230"
    card_settings = ("redundancy_weight",)

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        super().__init__(backbone, cfg, num_images)
        self.projector = projector_from(cfg, backbone.feature_dim)
        self.loss_fn = BarlowTwinsLoss(cfg.method.redundancy_weight)
        self.loss_scale = cfg.method.loss_scale  # solo-learn's scale_loss (0.1 in its CIFAR recipe)

    def forward(self, views):
        features = self.backbone_features(views)  # [(B, F)] per view, F = backbone.feature_dim
        z = apply_to_views(self.projector, features)  # [(B, D)] per view; one call, BatchNorm sees every view
        z = [gather_with_grad(v) for v in z]  # [(B global, D)]: batch statistics over every rank
        terms = [self.loss_fn.terms(z[i], z[j]) for i, j in cross_view_pairs(len(views), self.num_global)]
        # The loss is linear in its two terms, so the mean of the pair losses is the weighted mean terms.
        on_diagonal, redundancy = (torch.stack(t).mean() for t in zip(*terms))
        loss = self.loss_scale * self.loss_fn.combine(on_diagonal, redundancy)
        return loss, {"embedding_std": embedding_spread(z[0]), "on_diagonal": on_diagonal.detach(),
                      "redundancy": redundancy.detach()}
