"""What every method shares: the ``Method`` interface, the multi-view backbone call, EMA and schedules.

A method is an ``nn.Module`` that owns everything but the data: the backbone (the only part that
evaluation, export and the demo see) plus its projector, predictor, momentum target, prototypes, queue or
centre. The loop (``crlf.training.loop``) only ever does::

    method.on_step_start(clock)            # schedules: teacher temperature, prototype normalisation, ...
    loss, logs = method(views)             # views: list of (B, 3, S, S) batches, the global views first
    loss.backward(); optimizer.step()
    method.on_step_end(clock)              # EMA of the momentum target, queue and centre updates

and everything a method needs to resume exactly is in ``method.state_dict()`` (buffers included: queue,
queue pointer, centre), so a checkpoint is ``{"method": method.state_dict(), "optimizer": ...}``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from crlf.config import Config
from crlf.methods.settings import MethodSettings
from crlf.models.heads import mlp

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class StepClock:
    """Where training stands at a step: ``epoch`` in epochs (fractional: 2.5 is half-way through the third)."""

    epoch: float
    total_epochs: int

    @property
    def progress(self) -> float:
        """Fraction of training done, in [0, 1]."""
        return min(1.0, self.epoch / self.total_epochs)


def forward_backbone(backbone: nn.Module, views: list[torch.Tensor], channels_last: bool = False) -> list[torch.Tensor]:
    """Backbone features of every view, in the order given: ``[(B, 3, S_i, S_i)] -> [(B, D)]``.

    Views of the same size go through the backbone in one call (BatchNorm sees them together, and one big
    batch is faster than several small ones); one call per distinct size, as DINO's multi-crop wrapper does.
    """
    by_size: dict[tuple[int, ...], list[int]] = {}
    for i, view in enumerate(views):
        by_size.setdefault(tuple(view.shape[1:]), []).append(i)
    features: list[torch.Tensor | None] = [None] * len(views)
    for indices in by_size.values():
        x = torch.cat([views[i] for i in indices]) if len(indices) > 1 else views[indices[0]]  # (kB, 3, S, S)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for i, part in zip(indices, backbone(x).split([len(views[i]) for i in indices])):
            features[i] = part  # (B, D)
    return features  # type: ignore[return-value]


def apply_to_views(module: nn.Module, features: list[torch.Tensor]) -> list[torch.Tensor]:
    """One call of ``module`` (a projector, predictor) on all views together; ``[(B, D)] -> [(B, D')]``."""
    out = module(torch.cat(features) if len(features) > 1 else features[0])  # (VB, D')
    return list(out.split([len(f) for f in features]))


def cross_view_pairs(num_views: int, num_global: int) -> list[tuple[int, int]]:
    """``(i, j)`` pairs where view ``i`` is predicted from global view ``j`` (``i != j``): with two views
    ``[(1, 0), (0, 1)]``, the symmetric loss; with multi-crop every local view also learns from each global one."""
    return [(i, j) for j in range(num_global) for i in range(num_views) if i != j]


@torch.no_grad()
def ema_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """``target <- momentum * target + (1 - momentum) * online``, parameters only.

    Buffers (BatchNorm running statistics) are not averaged: the target runs in train mode on its own
    batches and keeps its own statistics, as in BYOL; only the online backbone is ever exported."""
    target_params = [p for p in target.parameters()]
    online_params = [p.detach() for p in online.parameters()]
    torch._foreach_mul_(target_params, momentum)
    torch._foreach_add_(target_params, online_params, alpha=1 - momentum)


def cosine_schedule(start: float, end: float, progress: float) -> float:
    """``start`` at progress 0, ``end`` at progress 1, along half a cosine (BYOL's momentum schedule)."""
    return end - (end - start) * (math.cos(math.pi * min(1.0, max(0.0, progress))) + 1) / 2


def embedding_spread(z: torch.Tensor) -> torch.Tensor:
    """Mean per-dimension std of the L2-normalised rows of ``z`` (B, D): ~1/sqrt(D) when the embeddings are
    spread over the sphere, 0 when every image maps to the same point (collapse)."""
    return F.normalize(z.detach().float(), dim=1).std(0).mean()


# ViT position embeddings and class / register / distillation tokens (timm's ``no_weight_decay()`` names): not
# 1-d, but decaying them pulls every position and token towards zero, so DeiT, timm and MAE exclude them too.
NO_DECAY_NAMES = ("pos_embed", "cls_token", "reg_token", "dist_token")


def is_norm_or_bias(name: str, param: nn.Parameter) -> bool:
    """Biases and normalisation weights, the 1-d parameters (BatchNorm / LayerNorm weights and biases, linear
    biases), and a ViT's position embeddings and tokens (by name: ``backbone.pos_embed``, ``...cls_token``)."""
    return param.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES


class Method(nn.Module):
    """Base class of every method. Subclasses set ``name``, build their heads in ``__init__`` and implement
    ``forward``; the hooks default to doing nothing.

    With several processes (:mod:`crlf.collectives`) a method gathers, in ``forward``, whatever its loss needs
    from the other ranks (negatives, batch statistics, Sinkhorn scores, queue entries, the teacher's mean)."""

    name = "method"
    settings_type: ClassVar[type[MethodSettings]] = MethodSettings  # its `method:` section, parsed by the config
    title = "method"  # the paper's name for it, for the model card
    paper: str | None = None  # the paper's address, for the model card
    card_settings: ClassVar[tuple[str, ...]] = ()  # the settings the model card's method row shows
    divergence_advice = "Lower --lr"  # what the loop says when the loss or the weights stop being finite
    needs_vit = False  # True: works on patch tokens, so only a ViT backbone will do (vit_tokens.vision_transformer)
    sync_batchnorm = True  # several processes: BatchNorm over the global batch (the recipes' SyncBN) unless the config says
    ddp_find_unused_parameters = False  # True where a trainable parameter can sit a step out (frozen prototypes)

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        super().__init__()
        self.backbone = backbone
        self.num_global = cfg.augment.crops[0].count  # the first crop spec gives the global views
        self.channels_last = cfg.train.channels_last
        self.embedding_dim = cfg.model.proj_out_dim  # the dimension embedding_spread is measured in

    # -- the interface ---------------------------------------------------------------------------------
    def forward(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``views``: a list of ``(B, 3, S, S)`` batches (global views first) -> (scalar loss, logs).

        ``logs`` holds detached scalars; ``embedding_std`` (see :func:`embedding_spread`) is the collapse
        watch the loop averages per epoch."""
        raise NotImplementedError

    def on_step_start(self, clock: StepClock) -> None:
        """Before the forward pass of a step: per-step schedules."""

    def on_step_end(self, clock: StepClock) -> None:
        """After the optimiser step: EMA momentum targets, queues, centres."""

    def param_groups(self, weight_decay: float, exclude_bias_and_norm: bool = False) -> list[dict]:
        """Trainable parameters for the optimiser, in registration order (momentum targets, which have
        ``requires_grad=False``, are left out). With ``exclude_bias_and_norm`` biases and normalisation
        weights form a second group without weight decay, which LARS also leaves unscaled."""
        named = [(n, p) for n, p in self.named_parameters() if p.requires_grad]
        if not exclude_bias_and_norm:
            return [{"params": [p for _, p in named], "weight_decay": weight_decay}]
        decay = [p for n, p in named if not is_norm_or_bias(n, p)]
        plain = [p for n, p in named if is_norm_or_bias(n, p)]
        return [{"params": decay, "weight_decay": weight_decay},
                {"params": plain, "weight_decay": 0.0, "lars_exclude": True}]

    # -- helpers for subclasses ---------------------------------------------------------------------
    def compile_backbone(self) -> None:
        """Use ``torch.compile`` for the backbone's forward (the module and its state dict are unchanged)."""
        # Kept out of the module tree (object.__setattr__), so state_dict keys stay "backbone.*".
        object.__setattr__(self, "_compiled_backbone", torch.compile(self.backbone))

    def backbone_features(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """The online backbone's features of every view, ``[(B, F)]``; the first view's, detached, are kept for the
        loop's online linear probe (:mod:`crlf.training.monitors.online_probe`), which then needs no backbone pass of its own."""
        compiled = self.__dict__.get("_compiled_backbone")
        features = forward_backbone(self.backbone if compiled is None else compiled, views, self.channels_last)
        self.last_features = features[0].detach()  # (B, F); not state: never in the state dict
        return features


def projector_from(cfg: Config, in_dim: int, activation: str = "relu") -> nn.Sequential:
    """The configured projector ``(B, in_dim) -> (B, D)``, ``D = model.proj_out_dim`` (``model.proj_*``): the one
    place every method builds its projector (DINO's head with GELU, SimCLR's inside :class:`ProjectionHead`)."""
    m = cfg.model
    return mlp(in_dim, m.proj_hidden_dim, m.proj_out_dim, m.proj_layers, m.proj_batchnorm,
               m.proj_last_batchnorm, m.proj_dropout, activation)


def predictor_from(cfg: Config) -> nn.Sequential:
    """The predictor of BYOL, SimSiam, MoCo v3 (and NNCLR, FastSiam): ``Linear -> BN -> ReLU -> Linear``,
    ``(B, D) -> (B, D)`` through a ``model.pred_hidden_dim`` bottleneck."""
    m = cfg.model
    return mlp(m.proj_out_dim, m.pred_hidden_dim, m.proj_out_dim, 2, batchnorm=True)


class MomentumMethod(Method):
    """A method with a momentum target: ``target_backbone`` (and ``target_projector``, when the method has a
    ``projector``) are EMA copies of the online ones (no gradients, so ``param_groups`` leaves them out), run in
    train mode on the global views. I-JEPA's target is a backbone alone.

    The momentum follows BYOL's cosine schedule from ``method.momentum`` to ``method.momentum_final``; it is
    a function of the step clock only, so nothing but the target weights needs saving to resume."""

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int, projector: nn.Module | None = None):
        super().__init__(backbone, cfg, num_images)
        self.projector = projector
        self.target_backbone = copy.deepcopy(backbone).requires_grad_(False)
        self.target_projector = None if projector is None else copy.deepcopy(projector).requires_grad_(False)
        self.momentum_range = (cfg.method.momentum, cfg.method.momentum_final)
        self.momentum = cfg.method.momentum  # the current value, for the logs

    def momentum_at(self, clock: StepClock) -> float:
        return cosine_schedule(*self.momentum_range, clock.progress)

    def on_step_start(self, clock: StepClock) -> None:
        self.momentum = self.momentum_at(clock)

    def on_step_end(self, clock: StepClock) -> None:
        m = self.momentum_at(clock)
        ema_(self.target_backbone, self.backbone, m)
        if self.projector is not None:
            ema_(self.target_projector, self.projector, m)

    @torch.no_grad()
    def target_embeddings(self, views: list[torch.Tensor]) -> list[torch.Tensor]:
        """Target projections of the global views: ``[(B, D)]`` in fp32, without gradient."""
        features = forward_backbone(self.target_backbone, views[:self.num_global], self.channels_last)
        return [z.float() for z in apply_to_views(self.target_projector, features)]  # [(B, D)]

    def momentum_log(self, like: torch.Tensor) -> torch.Tensor:
        return like.new_tensor(self.momentum, dtype=torch.float32)  # on the loss's device: logs are stacked


@torch.no_grad()
def write_to_ring(queue: torch.Tensor, pointer: torch.Tensor, rows: torch.Tensor) -> int:
    """Write ``rows`` ``(B, D)`` into the ring buffer ``queue`` ``(K, D)`` at ``pointer`` (a 0-d long tensor),
    wrapping round, and advance the pointer, on the device (no host sync); returns how many were written
    (the last ``K`` when ``B > K``). MoCo v2's negatives and NNCLR's support set."""
    length = len(queue)
    rows = rows[-length:]  # (min(B, K), D)
    where = (pointer + torch.arange(len(rows), device=rows.device)) % length  # (B,)
    queue[where] = rows.to(queue.dtype)
    pointer.copy_((pointer + len(rows)) % length)
    return len(rows)


def fitted_queue_size(requested: int, num_images: int, batch_size: int, what: str) -> int:
    """A queue of past embeddings must hold fewer entries than the training set minus one batch, or it
    would hold copies of the current images (a stale copy of an image's own positive as a negative);
    rounded down to whole batches. Warns when it has to shrink the requested length."""
    import warnings

    if requested == 0:
        return 0
    fits = max(0, (num_images - batch_size) // batch_size * batch_size)
    size = min(requested, fits) // batch_size * batch_size
    if size != requested:
        warnings.warn(f"method.queue_size={requested} does not fit {what}: the training set has {num_images} "
                      f"images and batches of {batch_size}, so the queue holds {size} embeddings "
                      f"(whole batches, fewer than the images outside the current batch).", stacklevel=3)
    return size
