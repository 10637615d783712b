"""SimCLR (Chen et al., 2020, https://arxiv.org/abs/2002.05709): NT-Xent over every view of the batch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from crlf.collectives import gather_with_grad
from crlf.config import Config
from crlf.methods.base import Method, embedding_spread, projector_from
from crlf.methods.settings import TemperatureSettings
from crlf.models.heads import ProjectionHead

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class SimCLRSettings(TemperatureSettings):
    """``temperature``: NT-Xent's T (0.07 in the reference recipe, 0.5 in the paper's CIFAR runs)."""

    name: str = "simclr"


class NTXentLoss(nn.Module):
    """Normalised temperature-scaled cross entropy over ``V`` views of ``N`` images.

    Each of the ``VN`` embeddings is an anchor; its positives are the other ``V - 1`` views of the same
    image and its negatives the remaining ``VN - V`` embeddings. With two views this is the paper's loss
    (one positive, ``2N - 2`` negatives); with more (multi-crop) each anchor's loss is the mean over its
    positives of ``-log softmax``, as in the multi-positive form of Khosla et al., 2020. Computed in fp32
    whatever the autocast dtype: a temperature of 0.07 turns bf16 rounding of the similarities into noise.
    """

    def __init__(self, temperature: float = 0.5):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, *views: torch.Tensor) -> torch.Tensor:
        """``views``: ``V >= 2`` tensors ``(N, D)`` (need not be normalised), view ``v`` row ``i`` an
        embedding of image ``i`` -> scalar loss."""
        if len(views) < 2 or any(v.shape != views[0].shape or v.dim() != 2 for v in views):
            raise ValueError(f"NT-Xent needs two or more (N, D) tensors of one shape; got "
                             f"{[tuple(v.shape) for v in views]}")
        n, num_views = views[0].shape[0], len(views)
        with torch.autocast(views[0].device.type, enabled=False):  # inside an autocast region too: fp32
            z = F.normalize(torch.cat(views).float(), dim=1)  # (VN, D)
            logits = z @ z.T / self.temperature  # (VN, VN) cosine similarities / T
            logits.fill_diagonal_(float("-inf"))  # a view is not its own negative
            if num_views == 2:  # one positive per anchor: the other view, N rows away
                targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)  # (2N,)
                return F.cross_entropy(logits, targets)
            image = torch.arange(num_views * n, device=z.device) % n  # (VN,) which image each row shows
            positive = (image[:, None] == image[None, :]).fill_diagonal_(False)  # (VN, VN)
            log_prob = logits.log_softmax(dim=1).masked_fill(~positive, 0.0)  # -inf * 0 would be nan
            return -(log_prob.sum(1) / (num_views - 1)).mean()


class SimCLR(Method):
    """Backbone -> :class:`ProjectionHead` (L2-normalised) -> NT-Xent across all views."""

    name = "simclr"
    settings_type = SimCLRSettings
    title, paper = "SimCLR", "https://arxiv.org/abs/2002.05709"
    card_settings = ("temperature",)
    divergence_advice = "Lower --lr or raise --temperature"  # a small T turns similarities into huge logits

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        super().__init__(backbone, cfg, num_images)
        self.projector = ProjectionHead(net=projector_from(cfg, backbone.feature_dim))  # unit rows
        self.loss_fn = NTXentLoss(cfg.method.temperature)

    def forward(self, views):
        features = self.backbone_features(views)  # [(B, F)] per view, F = backbone.feature_dim
        z = self.projector(torch.cat(features))  # (VB, D): one call, BatchNorm (if any) sees every view
        z = z.float()
        # Each view's embeddings from every rank, gradient included: the negatives of the whole global batch.
        z_views = [gather_with_grad(v) for v in z.split(len(views[0]))]  # V x (B global, D)
        loss = self.loss_fn(*z_views)
        return loss, {"embedding_std": embedding_spread(z_views[0])}
