"""SimSiam (Chen & He, 2021, https://arxiv.org/abs/2011.10566): one network, two views, a predictor and a
stop-gradient; no negatives, no momentum target. The stop-gradient alone prevents collapse (the paper's
Figure 2); ``embedding_std`` is the paper's collapse watch (std of the L2-normalised projections)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from crlf.config import Config
from crlf.methods.base import (
    Method,
    apply_to_views,
    cross_view_pairs,
    embedding_spread,
    predictor_from,
    projector_from,
)
from crlf.methods.settings import MethodSettings

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class SimSiamSettings(MethodSettings):
    """No settings of its own: the heads' sizes are in ``model``, the predictor's fixed learning rate is the
    paper's choice."""

    name: str = "simsiam"


class NegativeCosine(nn.Module):
    """SimSiam's ``D(p, stopgrad(z)) = -cos(p, z)`` (eq. 1 and 3 of the paper), mean over the batch.

    ``p``: ``(N, D)`` predictions, ``z``: ``(N, D)`` projections, row ``i`` of both from image ``i`` ->
    scalar in [-1, 1]. ``z`` is detached here: the stop-gradient is part of the loss's definition.
    Computed in fp32 even inside autocast."""

    def forward(self, p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        if p.dim() != 2 or p.shape != z.shape:
            raise ValueError(f"the negative cosine needs two (N, D) tensors of one shape; got {tuple(p.shape)}, "
                             f"{tuple(z.shape)}")
        with torch.autocast(p.device.type, enabled=False):
            cos = (F.normalize(p.float(), dim=1) * F.normalize(z.detach().float(), dim=1)).sum(1)  # (N,)
            return -cos.mean()


class SimSiam(Method):
    """Backbone -> projector (``model.proj_*``; the paper's: 3 layers, BN, last BN) -> predictor
    (bottleneck ``model.pred_hidden_dim``); each view predicts the (stopped) projection of each other global
    view. With two views the loss is the paper's ``D(p1, z2) / 2 + D(p2, z1) / 2``."""

    name = "simsiam"
    settings_type = SimSiamSettings
    title, paper = "SimSiam", "https://arxiv.org/abs/2011.10566"

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        super().__init__(backbone, cfg, num_images)
        self.projector = projector_from(cfg, backbone.feature_dim)
        self.predictor = predictor_from(cfg)
        self.loss_fn = NegativeCosine()

    def param_groups(self, weight_decay, exclude_bias_and_norm=False):
        """The base groups, with the predictor's parameters in groups of their own that keep the base
        learning rate throughout (``fixed_lr``): the paper's Table 1b, and solo-learn's ``static_lr``."""
        predictor = {id(p) for p in self.predictor.parameters()}
        groups = []
        for group in super().param_groups(weight_decay, exclude_bias_and_norm):
            params = group["params"]
            groups.append({**group, "params": [p for p in params if id(p) not in predictor]})
            groups.append({**group, "params": [p for p in params if id(p) in predictor], "fixed_lr": True})
        return [g for g in groups if g["params"]]

    def forward(self, views):
        z = apply_to_views(self.projector, self.backbone_features(views))  # [(B, D)] per view
        p = apply_to_views(self.predictor, z)  # [(B, D)] per view
        pairs = cross_view_pairs(len(views), self.num_global)
        loss = torch.stack([self.loss_fn(p[i], z[j]) for i, j in pairs]).mean()
        return loss, {"embedding_std": embedding_spread(z[0])}
