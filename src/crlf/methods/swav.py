"""SwAV (Caron et al., 2020, https://arxiv.org/abs/2006.09882): swapped prediction of online cluster codes.

Each view's L2-normalised projection is scored against ``K`` unit prototypes; Sinkhorn-Knopp turns the scores
of each global view (plus a queue of recent projections on small batches) into soft codes that use every
prototype equally often, and every other view predicts those codes from its own scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from crlf.collectives import gather, shard, world_size
from crlf.config import Config
from crlf.methods.base import (
    Method,
    StepClock,
    cross_view_pairs,
    embedding_spread,
    fitted_queue_size,
    projector_from,
)
from crlf.methods.settings import TemperatureSettings, check

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class SwAVSettings(TemperatureSettings):
    """``temperature`` of the softmax of prototype scores; ``num_prototypes``; Sinkhorn-Knopp's ``epsilon`` and
    iterations; a queue of ``queue_size`` past projections per global view joining Sinkhorn from epoch
    ``queue_start_epoch`` (0 = none; fitted down, with a warning, on small data); prototypes frozen for the first
    ``freeze_prototypes_epochs``."""

    name: str = "swav"
    num_prototypes: int = 3000
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    queue_size: int = 0
    queue_start_epoch: float = 0.0
    freeze_prototypes_epochs: float = 0.0

    def validate(self) -> None:
        super().validate()
        check(self.num_prototypes >= 2, f"method.num_prototypes must be >= 2 (got {self.num_prototypes}).")
        check(self.sinkhorn_epsilon > 0, f"method.sinkhorn_epsilon must be > 0 (got {self.sinkhorn_epsilon}); "
                                         f"try 0.05.")
        check(self.sinkhorn_iterations >= 1, f"method.sinkhorn_iterations must be >= 1 (got "
                                             f"{self.sinkhorn_iterations}); try 3.")
        check(self.queue_size >= 0, f"method.queue_size must be >= 0 (got {self.queue_size}); 0 = no queue.")
        check(self.queue_start_epoch >= 0, f"method.queue_start_epoch must be >= 0 (got {self.queue_start_epoch}).")
        check(self.freeze_prototypes_epochs >= 0,
              f"method.freeze_prototypes_epochs must be >= 0 (got {self.freeze_prototypes_epochs}).")


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """Codes of ``N`` samples over ``K`` prototypes from their ``(N, K)`` scores (Algorithm 1 of the paper).

    Returns ``Q`` ``(N, K)`` in fp32, without gradient: row ``n`` is sample ``n``'s code, a distribution over the
    prototypes (every row sums to 1, exactly); the columns are equipartitioned, each summing to ``N / K``
    (approximately after a few ``iterations``, exactly in the limit). ``Q`` is ``exp(scores / epsilon)``
    alternately rescaled per prototype and per sample, the per-sample step last. Computed in the log domain:
    the same numbers as the paper's code, but no ``exp`` overflow or underflow whatever ``epsilon``.
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (N, K), got {tuple(scores.shape)}")
    n, k = scores.shape
    with torch.autocast(scores.device.type, enabled=False):
        log_q = scores.float() / epsilon  # (N, K)
        for _ in range(iterations):
            log_q = log_q - log_q.logsumexp(0, keepdim=True) - math.log(k)  # each prototype: mass 1/K
            log_q = log_q - log_q.logsumexp(1, keepdim=True) - math.log(n)  # each sample: mass 1/N
        return (log_q + math.log(n)).exp()  # (N, K) rows sum to 1


class SwAVLoss(nn.Module):
    """Swapped prediction (eq. 1 of https://arxiv.org/abs/2006.09882), averaged over view pairs.

    ``scores``: ``V`` tensors ``(B, K)``, every view's projections scored against the prototypes (cosines);
    ``codes``: ``G <= V`` tensors ``(B, K)``, the Sinkhorn codes of the global views ``0..G-1`` (rows sum to 1).
    For each pair ``(i, j)`` of :func:`cross_view_pairs` (view ``i`` predicts global view ``j``'s code) the term is
    ``-1/B sum_b sum_k q_j[b, k] log softmax(s_i[b] / T)_k``; the loss is their mean. Computed in fp32 whatever
    the autocast dtype: the scores are divided by a small temperature.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def forward(self, scores: Sequence[torch.Tensor], codes: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(scores) < 2 or not 1 <= len(codes) <= len(scores):
            raise ValueError(f"SwAV needs 2 or more views and 1 to {len(scores)} codes; got {len(scores)} views "
                             f"and {len(codes)} codes")
        shape = scores[0].shape
        if len(shape) != 2 or any(t.shape != shape for t in (*scores, *codes)):
            raise ValueError(f"scores and codes must all be (B, K) of one shape; got "
                             f"{[tuple(t.shape) for t in scores]} and {[tuple(t.shape) for t in codes]}")
        with torch.autocast(scores[0].device.type, enabled=False):
            log_p = [(s.float() / self.temperature).log_softmax(dim=1) for s in scores]  # V x (B, K)
            pairs = cross_view_pairs(len(scores), len(codes))
            terms = [-(codes[j].float() * log_p[i]).sum(1).mean() for i, j in pairs]
            return torch.stack(terms).mean()


class SwAV(Method):
    """Backbone -> :func:`mlp` projector -> L2-normalise -> prototypes ``Linear(D, K, bias=False)`` with unit
    rows -> Sinkhorn codes of the global views -> :class:`SwAVLoss`.

    With several processes Sinkhorn runs on the scores of the whole global batch (gathered, no gradient: its
    equipartition is over every sample), each rank keeps its own rows of the codes, and the queue is fed with
    every rank's projections, so it is the same on every rank."""

    name = "swav"
    settings_type = SwAVSettings
    title, paper = "SwAV", "https://arxiv.org/abs/2006.09882"
    card_settings = ("temperature", "num_prototypes")
    divergence_advice = "Lower --lr or raise --temperature"

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        super().__init__(backbone, cfg, num_images)
        m, c = cfg.model, cfg.method
        self.projector = projector_from(cfg, backbone.feature_dim)
        self.prototypes = nn.Linear(m.proj_out_dim, c.num_prototypes, bias=False)
        self.loss_fn = SwAVLoss(c.temperature)
        self.epsilon, self.iterations = c.sinkhorn_epsilon, c.sinkhorn_iterations
        self.queue_start_epoch, self.freeze_prototypes_epochs = c.queue_start_epoch, c.freeze_prototypes_epochs
        size = fitted_queue_size(c.queue_size, num_images, cfg.train.batch_size, "SwAV's queue")
        # One queue per global view, newest first (the paper's code shifts it by a batch each step); it fills
        # from the first step, so it is full when it starts to count; queue_filled says how much is real.
        self.register_buffer("queue", torch.zeros(self.num_global, size, m.proj_out_dim))  # (G, Q, D)
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self._epoch = 0.0  # from the clock, every step: not state
        self._to_enqueue: torch.Tensor | None = None  # this step's global projections, until on_step_end

    @property
    def ddp_find_unused_parameters(self) -> bool:  # frozen prototypes get no gradient in the first epochs
        return self.freeze_prototypes_epochs > 0

    def on_step_start(self, clock: StepClock) -> None:
        self._epoch = clock.epoch
        with torch.no_grad():  # unit prototypes: scores are cosines (the paper's code does this before each step)
            self.prototypes.weight.copy_(F.normalize(self.prototypes.weight, dim=1))

    def queue_in_use(self) -> bool:
        """The queue joins Sinkhorn from ``queue_start_epoch`` on, once full (never with zero rows in it)."""
        size = self.queue.shape[1]
        return size > 0 and self._epoch >= self.queue_start_epoch and int(self.queue_filled) >= size

    def forward(self, views):
        b, g = len(views[0]), self.num_global
        features = self.backbone_features(views)  # [(B, F)] per view, F = backbone.feature_dim
        z = self.projector(torch.cat(features))  # (VB, D): one call, BatchNorm sees every view
        frozen = self._epoch < self.freeze_prototypes_epochs
        # Frozen prototypes are a constant of the graph: no gradient, so neither the update nor weight decay.
        weight = self.prototypes.weight.detach() if frozen else self.prototypes.weight  # (K, D)
        with torch.autocast(z.device.type, enabled=False):  # cosines / T: bf16 rounding would be noise
            z = F.normalize(z.float(), dim=1)  # (VB, D) unit rows
            scores = z @ weight.float().T  # (VB, K)
        scores_by_view = scores.split(b)  # V x (B, K)
        use_queue = self.queue_in_use()
        codes = []
        with torch.no_grad():
            for j in range(g):
                s = gather(scores_by_view[j].detach())  # (B global, K): every rank's scores
                if use_queue:  # the queue's scores first, as in the paper's code; its codes are dropped
                    s = torch.cat([self.queue[j] @ weight.float().T, s])  # (Q + B global, K)
                codes_global = sinkhorn(s, self.epsilon, self.iterations)[-b * world_size():]  # (B global, K)
                codes.append(shard(codes_global))  # (B, K): this rank's rows
        self._to_enqueue = gather(z[:g * b].detach().view(g, b, -1), dim=1)  # (G, B global, D)
        loss = self.loss_fn(scores_by_view, codes)
        return loss, {"embedding_std": embedding_spread(z[:b]),
                      "queue_in_use": z.new_tensor(float(use_queue))}

    @torch.no_grad()
    def on_step_end(self, clock: StepClock) -> None:
        size = self.queue.shape[1]
        if self._to_enqueue is not None and size > 0:
            # Shifted FIFO: this batch in front, everything else one batch further back, the oldest dropped.
            self.queue.copy_(torch.cat([self._to_enqueue.to(self.queue.dtype), self.queue], dim=1)[:, :size])
            self.queue_filled.add_(self._to_enqueue.shape[1]).clamp_(max=size)
        self._to_enqueue = None
