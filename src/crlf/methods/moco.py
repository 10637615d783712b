"""MoCo v2 (Chen et al., 2020, https://arxiv.org/abs/2003.04297) and MoCo v3 (Chen, Xie & He, 2021,
https://arxiv.org/abs/2104.02057).

Both contrast the online encoder's queries with keys from a momentum target (:class:`MomentumMethod`).
MoCo v2 takes its negatives from a queue of past keys; MoCo v3 drops the queue for the other keys of the
batch and adds BYOL's predictor on the query side.
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
    MomentumMethod,
    apply_to_views,
    cross_view_pairs,
    embedding_spread,
    fitted_queue_size,
    predictor_from,
    projector_from,
    write_to_ring,
)
from crlf.methods.settings import MomentumTemperatureSettings, check

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class MoCoV2Settings(MomentumTemperatureSettings):
    """``temperature`` of InfoNCE, the key encoder's EMA ``momentum`` -> ``momentum_final``, and ``queue_size``
    past keys as negatives (fitted down, with a warning, when the training set is too small for it)."""

    name: str = "mocov2"
    queue_size: int = 4096  # the paper: 65536

    def validate(self) -> None:
        super().validate()
        check(self.queue_size > 0, f"mocov2 needs a queue of negatives: set method.queue_size > 0 (got "
                                   f"{self.queue_size}; e.g. 4096, the paper uses 65536). Without a queue (in-batch "
                                   f"negatives only) it is not MoCo v2; use method.name=mocov3 or simclr for that.")


@dataclass(frozen=True)
class MoCoV3Settings(MomentumTemperatureSettings):
    """``temperature`` of the contrastive loss and the key encoder's EMA ``momentum`` -> ``momentum_final``; no
    queue (``queue_size: 0`` is accepted, as every method without one does)."""

    name: str = "mocov3"


def _check_temperature(temperature: float) -> float:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return float(temperature)


class InfoNCEWithQueue(nn.Module):
    """MoCo's InfoNCE (eq. 1 of He et al., 2020): for each query ``q_i`` its key ``k_i`` is the positive
    and every row of the queue a negative,
    ``-log exp(q_i.k_i / T) / (exp(q_i.k_i / T) + sum_j exp(q_i.n_j / T))``, mean over ``i``.

    ``q``: ``(N, D)``, ``k``: ``(N, D)``, ``queue``: ``(K, D)``; rows are L2-normalised here -> scalar.
    Computed in fp32 even inside autocast: at T = 0.2 bf16 rounding of the similarities is noise."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor) -> torch.Tensor:
        if q.dim() != 2 or q.shape != k.shape or queue.dim() != 2 or queue.shape[1] != q.shape[1]:
            raise ValueError(f"InfoNCE needs q, k (N, D) and a queue (K, D); got {tuple(q.shape)}, "
                             f"{tuple(k.shape)}, {tuple(queue.shape)}")
        with torch.autocast(q.device.type, enabled=False):
            q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)  # (N, D)
            negatives = F.normalize(queue.float(), dim=1)  # (K, D)
            positive = (q * k).sum(1, keepdim=True)  # (N, 1)
            logits = torch.cat([positive, q @ negatives.T], dim=1) / self.temperature  # (N, 1 + K)
            targets = torch.zeros(len(q), dtype=torch.long, device=q.device)  # the positive is column 0
            return F.cross_entropy(logits, targets)


class MoCoV3Loss(nn.Module):
    """MoCo v3's ``ctr(q, k) = CE(q k^T / T, arange(N)) * 2T`` (Algorithm 1): query ``i``'s positive is key
    ``i``, its negatives the other keys of the batch. The ``2T`` factor makes the gradient scale
    independent of ``T``, as in the paper.

    ``q``: ``(N, D)`` queries, ``k``: ``(N, D)`` keys (both L2-normalised here) -> scalar. fp32 inside
    autocast."""

    def __init__(self, temperature: float = 0.2):
        super().__init__()
        self.temperature = _check_temperature(temperature)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if q.dim() != 2 or q.shape != k.shape:
            raise ValueError(f"MoCo v3's loss needs two (N, D) tensors of one shape; got {tuple(q.shape)}, "
                             f"{tuple(k.shape)}")
        with torch.autocast(q.device.type, enabled=False):
            q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)  # (N, D)
            logits = q @ k.T / self.temperature  # (N, N), positives on the diagonal
            targets = torch.arange(len(q), device=q.device)  # (N,)
            return F.cross_entropy(logits, targets) * (2 * self.temperature)


class MoCoV2(MomentumMethod):
    """Backbone -> MLP projector -> L2 norm (queries); the momentum target's keys; a queue of past keys.

    Each step the keys of global view 0 (``B`` rows) replace the oldest rows of the queue
    (``on_step_end``, after the optimiser step). Queue and pointer are buffers: a resumed run continues
    with the same negatives. No shuffled BatchNorm: the target's BatchNorm sees its own batch of global views,
    as in solo-learn's single-GPU runs. With several processes the keys of every rank are enqueued (the queue
    stays the same on every rank), and BatchNorm stays per rank unless ``train.sync_batchnorm`` (MoCo shuffles
    BatchNorm across GPUs instead of synchronising it)."""

    name = "mocov2"
    settings_type = MoCoV2Settings
    title, paper = "MoCo v2", "https://arxiv.org/abs/2003.04297"
    card_settings = ("temperature", "queue_size", "momentum")
    divergence_advice = "Lower --lr or raise --temperature"
    sync_batchnorm = False

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        batch = cfg.train.batch_size
        super().__init__(backbone, cfg, num_images, projector_from(cfg, backbone.feature_dim))
        size = fitted_queue_size(cfg.method.queue_size, num_images, batch, "mocov2")
        if size == 0:
            raise UsageError(f"the training set ({num_images} images) is too small for a mocov2 queue with batches "
                             f"of {batch}: it needs at least 2 x train.batch_size images. Lower --batch-size.")
        # Random unit keys to start with, as in the paper's code: the first steps see meaningless negatives.
        self.register_buffer("queue", F.normalize(torch.randn(size, cfg.model.proj_out_dim), dim=1))  # (K, D)
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))  # next row to overwrite
        self.loss_fn = InfoNCEWithQueue(cfg.method.temperature)
        self._new_keys: torch.Tensor | None = None  # this step's keys, enqueued in on_step_end

    def forward(self, views):
        z = apply_to_views(self.projector, self.backbone_features(views))  # [(B, D)] per view
        q = [F.normalize(v.float(), dim=1) for v in z]  # [(B, D)] queries, unit rows
        k = [F.normalize(v, dim=1) for v in self.target_embeddings(views)]  # [(B, D)] keys, no gradient
        # Symmetric over the global views (and every local view also queries each global key).
        pairs = cross_view_pairs(len(views), self.num_global)
        loss = torch.stack([self.loss_fn(q[i], k[j], self.queue) for i, j in pairs]).mean()
        if self.training:
            self._new_keys = gather(k[0])  # (B global, D): every rank's keys, in batch order
        return loss, {"embedding_std": embedding_spread(q[0]), "momentum": self.momentum_log(loss)}

    def on_step_end(self, clock):
        super().on_step_end(clock)
        if self._new_keys is not None:
            write_to_ring(self.queue, self.queue_ptr, self._new_keys)  # replaces the oldest keys
            self._new_keys = None


class MoCoV3(MomentumMethod):
    """Backbone -> projector -> predictor (queries) against the momentum target's projections (keys), with
    the other keys of the batch as negatives. The projector's depth and final BatchNorm come from
    ``model.proj_layers`` / ``proj_last_batchnorm`` (the paper: 3 layers for ResNet-50, last BN)."""

    name = "mocov3"
    settings_type = MoCoV3Settings
    title, paper = "MoCo v3", "https://arxiv.org/abs/2104.02057"
    card_settings = ("temperature", "momentum")
    divergence_advice = "Lower --lr or raise --temperature"

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        super().__init__(backbone, cfg, num_images, projector_from(cfg, backbone.feature_dim))
        self.predictor = predictor_from(cfg)
        self.loss_fn = MoCoV3Loss(cfg.method.temperature)

    def forward(self, views):
        z = apply_to_views(self.projector, self.backbone_features(views))  # [(B, D)] per view
        q = apply_to_views(self.predictor, z)  # [(B, D)] queries
        k = self.target_embeddings(views)  # [(B, D)] keys of the global views, no gradient
        # The other keys of the global batch are the negatives: queries (with gradient) and keys from every rank.
        q = [gather_with_grad(v) for v in q]  # [(B global, D)]
        k = [gather(v) for v in k]  # [(B global, D)]
        # ctr(q1, k2) + ctr(q2, k1) in the paper; averaged over the pairs here (half its value with 2 views).
        pairs = cross_view_pairs(len(views), self.num_global)
        loss = torch.stack([self.loss_fn(q[i], k[j]) for i, j in pairs]).mean()
        return loss, {"embedding_std": embedding_spread(z[0]), "momentum": self.momentum_log(loss)}
