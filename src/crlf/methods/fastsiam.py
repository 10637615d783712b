"""FastSiam (Pototzky, Sultan & Schmidt-Thieme, 2022, DAGM GCPR, https://doi.org/10.1007/978-3-031-16788-1_4):
SimSiam with several views of each image, where each view's prediction regresses the *mean* of the other views'
(stopped) projections. The averaged target is less noisy than one view's, which is what lets it train with
small batches on one GPU: the paper uses 4 views.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from crlf.config import Config
from crlf.errors import UsageError
from crlf.methods.base import apply_to_views, embedding_spread
from crlf.methods.settings import MethodSettings
from crlf.methods.simsiam import SimSiam

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class FastSiamSettings(MethodSettings):
    """No settings of its own: the number of views is ``augment.crops[0].count`` (the paper: 4; at least 3)."""

    name: str = "fastsiam"


class FastSiamLoss(nn.Module):
    """``mean_i -cos(p_i, mean_{j in G, j != i} stopgrad(z_j))``: each view's prediction against the mean of the
    other global views' projections (the raw projections are averaged, then the cosine taken).

    ``p``: ``V`` tensors ``(N, D)`` (predictions of every view), ``z``: ``G`` tensors ``(N, D)`` (projections of the
    global views ``0..G-1``, ``G >= 2``; detached here) -> scalar in [-1, 1]. fp32 inside autocast."""

    def forward(self, p: list[torch.Tensor], z: list[torch.Tensor]) -> torch.Tensor:
        if len(z) < 2 or len(p) < len(z) or any(t.dim() != 2 or t.shape != z[0].shape for t in (*p, *z)):
            raise ValueError(f"FastSiam's loss needs V >= G >= 2 tensors (N, D) of one shape; got predictions "
                             f"{[tuple(t.shape) for t in p]} and projections {[tuple(t.shape) for t in z]}")
        with torch.autocast(z[0].device.type, enabled=False):
            z_all = torch.stack([t.detach().float() for t in z])  # (G, N, D)
            total = z_all.sum(0)  # (N, D)
            terms = []
            for i, p_i in enumerate(p):
                # The other global views: all of them for a local view, all but itself for a global one.
                target = (total - z_all[i]) / (len(z) - 1) if i < len(z) else total / len(z)  # (N, D)
                terms.append(-(F.normalize(p_i.float(), dim=1) * F.normalize(target, dim=1)).sum(1).mean())
            return torch.stack(terms).mean()


class FastSiam(SimSiam):
    """SimSiam's backbone, projector and predictor (and its fixed-learning-rate predictor), with
    :class:`FastSiamLoss` over ``augment.crops[0].count >= 3`` global views (and any local ones). No batch
    statistics leave the rank except BatchNorm's, so several processes need nothing gathered."""

    name = "fastsiam"
    settings_type = FastSiamSettings
    title, paper = "FastSiam", "https://doi.org/10.1007/978-3-031-16788-1_4"

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        if cfg.augment.crops[0].count < 3:
            raise UsageError(f"fastsiam averages the targets of several views: set augment.crops[0].count >= 3 (the "
                             f"paper: 4, e.g. --set 'augment.crops=[{{count: 4}}]'); got "
                             f"{cfg.augment.crops[0].count}. With 2 views it is simsiam.")
        super().__init__(backbone, cfg, num_images)
        self.loss_fn = FastSiamLoss()

    def forward(self, views):
        z = apply_to_views(self.projector, self.backbone_features(views))  # [(B, D)] per view
        p = apply_to_views(self.predictor, z)  # [(B, D)] per view
        loss = self.loss_fn(p, z[:self.num_global])
        return loss, {"embedding_std": embedding_spread(z[0])}
