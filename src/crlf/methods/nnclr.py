"""NNCLR (Dwibedi et al., 2021, https://arxiv.org/abs/2104.14548): contrastive learning whose positive is not the
other view but its nearest neighbour in a support set of past embeddings, "semantic" positives that augmentation
alone does not give.

Each step the first global view's projections (of the whole global batch) join the support set, a FIFO queue; the
queue is a buffer, so a checkpoint holds it and a resumed run looks up the same neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from crlf.collectives import gather, gather_with_grad
from crlf.config import Config
from crlf.errors import UsageError
from crlf.methods.base import (
    Method,
    apply_to_views,
    cross_view_pairs,
    embedding_spread,
    fitted_queue_size,
    predictor_from,
    projector_from,
    write_to_ring,
)
from crlf.methods.settings import TemperatureSettings, check

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class NNCLRSettings(TemperatureSettings):
    """``temperature`` of the contrastive loss (the paper: 0.1); ``queue_size``: the support set's length (the
    paper: 98,304; fitted down, with a warning, when the training set is too small for it)."""

    name: str = "nnclr"
    temperature: float = 0.1
    queue_size: int = 98304

    def validate(self) -> None:
        super().validate()
        check(self.queue_size > 0, f"nnclr looks its positives up in a support set: method.queue_size must be > 0 "
                                   f"(got {self.queue_size}; the paper: 98304).")


def nearest_neighbours(z: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The row of ``support`` ``(K, D)`` with the highest cosine similarity to each row of ``z`` ``(N, D)``:
    ``(N, D)``, L2-normalised, without gradient (the paper's ``NN(z, Q)``)."""
    with torch.no_grad(), torch.autocast(z.device.type, enabled=False):
        support = F.normalize(support.float(), dim=1)  # (K, D)
        nearest = (F.normalize(z.float(), dim=1) @ support.T).argmax(dim=1)  # (N,)
        return support[nearest]  # (N, D)


class NNCLRLoss(nn.Module):
    """Eq. 2 of the paper: ``-log exp(nn_i . p_i / T) / sum_k exp(nn_i . p_k / T)``, mean over ``i``, where
    ``nn_i`` is the nearest neighbour of one view's projection of image ``i`` and ``p_k`` the prediction of the other
    view of image ``k`` (the batch's other predictions are the negatives).

    ``nn``: ``(N, D)`` (a constant: detached here), ``p``: ``(N, D)``; both L2-normalised here -> scalar. Computed
    in fp32 whatever the autocast dtype: similarities divided by a small temperature."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, nn_: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
        if nn_.dim() != 2 or nn_.shape != p.shape:
            raise ValueError(f"NNCLR's loss needs two (N, D) tensors of one shape; got {tuple(nn_.shape)}, "
                             f"{tuple(p.shape)}")
        with torch.autocast(p.device.type, enabled=False):
            nn_, p = F.normalize(nn_.detach().float(), dim=1), F.normalize(p.float(), dim=1)  # (N, D)
            logits = nn_ @ p.T / self.temperature  # (N, N), positives on the diagonal
            return F.cross_entropy(logits, torch.arange(len(p), device=p.device))


class NNCLR(Method):
    """Backbone -> projector (``model.proj_*``; the paper: 3 layers with BatchNorm) -> predictor; the nearest
    neighbour in the support set of each global view's projection is the positive of every other view's
    prediction (:func:`cross_view_pairs`; with two views the paper's symmetric loss, averaged).

    With several processes the predictions (with their gradient) and the neighbours of the whole global batch are
    gathered, so the negatives are the global batch's; the support set is fed with every rank's projections and
    stays the same on every rank. Until the first batch is in the support set, each projection is its own
    neighbour (the loss is then SimCLR's with a predictor)."""

    name = "nnclr"
    settings_type = NNCLRSettings
    title, paper = "NNCLR", "https://arxiv.org/abs/2104.14548"
    card_settings = ("temperature", "queue_size")
    divergence_advice = "Lower --lr or raise --temperature"

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        super().__init__(backbone, cfg, num_images)
        batch = cfg.train.batch_size
        size = fitted_queue_size(cfg.method.queue_size, num_images, batch, "NNCLR's support set")
        if size == 0:
            raise UsageError(f"the training set ({num_images} images) is too small for an NNCLR support set with "
                             f"batches of {batch}: it needs at least 2 x train.batch_size images. Lower --batch-size.")
        self.projector = projector_from(cfg, backbone.feature_dim)
        self.predictor = predictor_from(cfg)
        self.loss_fn = NNCLRLoss(cfg.method.temperature)
        self.register_buffer("queue", torch.zeros(size, cfg.model.proj_out_dim))  # (K, D) unit rows once filled
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next row to overwrite
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))  # rows 0..filled-1 are real
        self._to_enqueue: torch.Tensor | None = None  # this step's projections, until on_step_end

    def forward(self, views):
        z = apply_to_views(self.projector, self.backbone_features(views))  # [(B, D)] per view
        p = apply_to_views(self.predictor, z)  # [(B, D)] per view
        p = [gather_with_grad(v) for v in p]  # [(B global, D)]: the global batch's predictions are the negatives
        z_global = [gather(v.detach().float()) for v in z[:self.num_global]]  # [(B global, D)], no gradient
        filled = int(self.queue_filled)
        nn_ = [nearest_neighbours(v, self.queue[:filled] if filled else v) for v in z_global]  # [(B global, D)]
        pairs = cross_view_pairs(len(views), self.num_global)  # (i, j): view i's prediction, global view j's NN
        loss = torch.stack([self.loss_fn(nn_[j], p[i]) for i, j in pairs]).mean()
        if self.training:
            self._to_enqueue = F.normalize(z_global[0], dim=1)  # (B global, D), every rank's, in batch order
        return loss, {"embedding_std": embedding_spread(z[0])}

    @torch.no_grad()
    def on_step_end(self, clock) -> None:
        if self._to_enqueue is not None:
            written = write_to_ring(self.queue, self.queue_ptr, self._to_enqueue)
            self.queue_filled.add_(written).clamp_(max=len(self.queue))
        self._to_enqueue = None
