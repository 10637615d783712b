"""VICReg (Bardes, Ponce and LeCun, 2022, https://arxiv.org/abs/2105.04906): variance, invariance and
covariance regularisation of the projector's output; no negatives, no momentum target, no predictor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from crlf.collectives import gather_with_grad
from crlf.config import Config
from crlf.methods.base import Method, apply_to_views, cross_view_pairs, embedding_spread, projector_from
from crlf.methods.settings import MethodSettings, check

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class VICRegSettings(MethodSettings):
    """The weights of the invariance, variance and covariance terms (the paper: 25, 25, 1)."""

    name: str = "vicreg"
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0

    def validate(self) -> None:
        super().validate()
        for key in ("sim_weight", "var_weight", "cov_weight"):
            check(getattr(self, key) >= 0, f"method.{key} must be >= 0 (got {getattr(self, key)}).")


def off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The ``D * (D - 1)`` off-diagonal entries of a square ``(D, D)`` matrix, as a view (no mask to build):
    dropping the last entry leaves rows of ``D + 1`` that each start with a diagonal entry."""
    d = m.shape[0]
    return m.flatten()[:-1].view(d - 1, d + 1)[:, 1:]  # (D - 1, D)


def check_branches(z1: torch.Tensor, z2: torch.Tensor, what: str) -> None:
    """Both branches ``(B, D)`` of one shape with ``B >= 2``: a batch statistic of one sample does not exist."""
    if z1.dim() != 2 or z1.shape != z2.shape:
        raise ValueError(f"{what} needs two (B, D) tensors of one shape; got {tuple(z1.shape)} and "
                         f"{tuple(z2.shape)}")
    if z1.shape[0] < 2:
        raise ValueError(f"{what} needs a batch of at least 2 embeddings (its terms are statistics over the "
                         f"batch); got batch size {z1.shape[0]}")


class VICRegLoss(nn.Module):
    """``sim_weight * invariance + var_weight * variance + cov_weight * covariance`` of two branches.

    ``z1, z2``: ``(B, D)`` embeddings of the same ``B`` images (row ``i`` of each: image ``i``), ``B >= 2``.

    - invariance: mean squared error between ``z1`` and ``z2``;
    - variance: per branch, the mean over dimensions of ``relu(1 - sqrt(var + eps))`` (unbiased variance over
      the batch), averaged over the two branches (the paper's code: ``/ 2 + ... / 2``);
    - covariance: per branch, the sum of the squared off-diagonal entries of the ``(D, D)`` covariance matrix
      divided by ``D``, summed over the two branches.

    Computed in fp32 whatever the autocast dtype: a variance of bf16 values loses the small spreads that the
    hinge at std 1 is there to push up.
    """

    def __init__(self, sim_weight: float = 25.0, var_weight: float = 25.0, cov_weight: float = 1.0,
                 eps: float = 1e-4):
        super().__init__()
        for key, value in (("sim_weight", sim_weight), ("var_weight", var_weight), ("cov_weight", cov_weight)):
            if not value >= 0:
                raise ValueError(f"{key} must be >= 0, got {value}")
        if not eps > 0:
            raise ValueError(f"eps must be > 0, got {eps}")
        self.sim_weight, self.var_weight = float(sim_weight), float(var_weight)
        self.cov_weight = float(cov_weight)
        self.eps = float(eps)

    def _variance(self, z: torch.Tensor) -> torch.Tensor:
        std = torch.sqrt(z.var(dim=0) + self.eps)  # (D,) unbiased, as torch.var and the paper's code
        return F.relu(1 - std).mean()

    @staticmethod
    def _covariance(z: torch.Tensor) -> torch.Tensor:
        b, d = z.shape
        z = z - z.mean(dim=0)  # (B, D) centred
        cov = z.T @ z / (b - 1)  # (D, D)
        return off_diagonal(cov).pow(2).sum() / d

    def terms(self, z1: torch.Tensor, z2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The unweighted ``(invariance, variance, covariance)``, fp32 scalars."""
        check_branches(z1, z2, "VICRegLoss")
        with torch.autocast(z1.device.type, enabled=False):  # inside an autocast region too: fp32
            z1, z2 = z1.float(), z2.float()  # (B, D) each
            invariance = F.mse_loss(z1, z2)
            variance = (self._variance(z1) + self._variance(z2)) / 2
            covariance = self._covariance(z1) + self._covariance(z2)
        return invariance, variance, covariance

    def combine(self, invariance: torch.Tensor, variance: torch.Tensor,
                covariance: torch.Tensor) -> torch.Tensor:
        return self.sim_weight * invariance + self.var_weight * variance + self.cov_weight * covariance

    def forward(self, z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
        """``z1, z2``: ``(B, D)`` -> scalar fp32 loss."""
        return self.combine(*self.terms(z1, z2))


class VICReg(Method):
    """Backbone -> expander :func:`mlp` (the paper: 3 layers of 8192 with BatchNorm; CIFAR benchmarks 2048)
    -> :class:`VICRegLoss` averaged over :func:`cross_view_pairs` (multi-crop: each view against each global
    one)."""

    name = "vicreg"
    settings_type = VICRegSettings
    title, paper = "VICReg", "https://arxiv.org/abs/2105.04906"
    card_settings = ("sim_weight", "var_weight", "cov_weight")

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        super().__init__(backbone, cfg, num_images)
        mc = cfg.method
        self.projector = projector_from(cfg, backbone.feature_dim)
        self.loss_fn = VICRegLoss(mc.sim_weight, mc.var_weight, mc.cov_weight)

    def forward(self, views):
        features = self.backbone_features(views)  # [(B, F)] per view, F = backbone.feature_dim
        z = apply_to_views(self.projector, features)  # [(B, D)] per view; one call, BatchNorm sees every view
        z = [gather_with_grad(v) for v in z]  # [(B global, D)]: batch statistics over every rank
        pairs = cross_view_pairs(len(views), self.num_global)
        terms = [self.loss_fn.terms(z[i], z[j]) for i, j in pairs]
        # The loss is linear in its terms, so the mean of the pair losses is the weighted mean terms.
        invariance, variance, covariance = (torch.stack(t).mean() for t in zip(*terms))
        loss = self.loss_fn.combine(invariance, variance, covariance)
        return loss, {"embedding_std": embedding_spread(z[0]), "invariance": invariance.detach(),
                      "variance": variance.detach(), "covariance": covariance.detach()}
