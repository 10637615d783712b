"""BYOL (Grill et al., 2020, https://arxiv.org/abs/2006.07733): an online network (backbone, projector,
predictor) predicts the projection of another view made by a momentum target (an EMA of the online
backbone and projector). No negatives: the predictor and the slowly moving target prevent collapse.

:class:`crlf.methods.base.MomentumMethod` (the target, its cosine momentum schedule and EMA) is shared with
MoCo v2 and v3 and DINO.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from crlf.config import Config
from crlf.methods.base import (
    MomentumMethod,
    apply_to_views,
    cross_view_pairs,
    embedding_spread,
    predictor_from,
    projector_from,
)
from crlf.methods.settings import MomentumSettings

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class BYOLSettings(MomentumSettings):
    """The target's EMA momentum, ``momentum`` -> ``momentum_final`` on a cosine over training (the paper:
    0.996 -> 1)."""

    name: str = "byol"


class BYOLLoss(nn.Module):
    """BYOL's regression loss, eq. 2 of the paper: ``||p/|p| - z/|z|||^2 = 2 - 2 cos(p, z)``, batch mean.

    ``p``: ``(N, D)`` online predictions, ``z``: ``(N, D)`` target projections, row ``i`` of both from
    image ``i`` -> scalar in [0, 4]. ``z`` is a constant (the paper's stop-gradient on the target): it is
    detached here. Computed in fp32 even inside autocast (bf16 cosines near 1 lose the signal)."""

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if p.dim() != 2 or p.shape != z.shape:
            raise ValueError(f"BYOL's loss needs two (N, D) tensors of one shape; got {tuple(p.shape)}, "
                             f"{tuple(z.shape)}")
        with torch.autocast(p.device.type, enabled=False):
            cos = (F.normalize(p.float(), dim=1) * F.normalize(z.detach().float(), dim=1)).sum(1)  # (N,)
            return (2 - 2 * cos).mean()


class BYOL(MomentumMethod):
    """Online backbone -> projector -> predictor regresses the target's projection of every other view."""

    name = "byol"
    settings_type = BYOLSettings
    title, paper = "BYOL", "https://arxiv.org/abs/2006.07733"
    card_settings = ("momentum", "momentum_final")

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        super().__init__(backbone, cfg, num_images, projector_from(cfg, backbone.feature_dim))
        self.predictor = predictor_from(cfg)
        self.loss_fn = BYOLLoss()

    def forward(self, views):
        z = apply_to_views(self.projector, self.backbone_features(views))  # [(B, D)] per view
        p = apply_to_views(self.predictor, z)  # [(B, D)] per view
        targets = self.target_embeddings(views)  # [(B, D)] per global view
        # The paper's symmetric loss L + L~, averaged (not summed) over the (prediction, target) pairs.
        pairs = cross_view_pairs(len(views), self.num_global)
        loss = torch.stack([self.loss_fn(p[i], targets[j]) for i, j in pairs]).mean()
        return loss, {"embedding_std": embedding_spread(z[0]), "momentum": self.momentum_log(loss)}
