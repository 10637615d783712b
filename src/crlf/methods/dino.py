"""DINO (Caron et al., 2021, https://arxiv.org/abs/2104.14294): self-distillation with no labels.

A student (backbone + :class:`DINOHead`) learns to match, on every view, the output distribution of a momentum
teacher (an EMA copy of it) on the *other* global views. The teacher's logits are centred (a running mean
subtracted) and sharpened (a low temperature): the two together keep it from collapsing to one dimension or
to the uniform distribution.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from crlf.collectives import mean_over_ranks
from crlf.config import Config
from crlf.methods.base import (
    MomentumMethod,
    StepClock,
    cross_view_pairs,
    embedding_spread,
    forward_backbone,
    projector_from,
)
from crlf.methods.settings import MomentumTemperatureSettings, check

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class DINOSettings(MomentumTemperatureSettings):
    """``temperature``: the student's; the teacher's warms up linearly from ``warmup_teacher_temperature`` to
    ``teacher_temperature`` over ``warmup_teacher_epochs``; ``center_momentum`` of the teacher's centre;
    ``num_prototypes``: the head's output dimension; the head's last layer is frozen for the first
    ``freeze_prototypes_epochs`` (DINO's ``freeze_last_layer``); ``momentum`` -> ``momentum_final``: the teacher's
    EMA."""

    name: str = "dino"
    num_prototypes: int = 3000
    teacher_temperature: float = 0.04
    warmup_teacher_temperature: float = 0.04
    warmup_teacher_epochs: float = 0.0
    center_momentum: float = 0.9
    freeze_prototypes_epochs: float = 0.0

    def validate(self) -> None:
        super().validate()
        check(self.num_prototypes >= 2, f"method.num_prototypes must be >= 2 (got {self.num_prototypes}).")
        check(self.teacher_temperature > 0 and self.warmup_teacher_temperature > 0,
              f"method.teacher_temperature and warmup_teacher_temperature must be > 0 (got "
              f"{self.teacher_temperature}, {self.warmup_teacher_temperature}); try 0.04.")
        check(self.warmup_teacher_epochs >= 0,
              f"method.warmup_teacher_epochs must be >= 0 (got {self.warmup_teacher_epochs}).")
        check(0 <= self.center_momentum < 1, f"method.center_momentum must be in [0, 1) (got {self.center_momentum}).")
        check(self.freeze_prototypes_epochs >= 0,
              f"method.freeze_prototypes_epochs must be >= 0 (got {self.freeze_prototypes_epochs}).")


class DINOHead(nn.Module):
    """An MLP (GELU, built by :func:`projector_from`) to a bottleneck -> L2-normalise -> weight-normalised
    ``Linear(bottleneck, K, bias=False)`` with its norm ``g`` fixed to 1 (DINO's ``norm_last_layer=True``):
    ``(N, F) -> ((N, bottleneck), (N, K))``, the unit bottleneck and the logits, which are cosines in [-1, 1]."""

    def __init__(self, mlp: nn.Sequential, num_prototypes: int):
        super().__init__()
        self.mlp = mlp
        for module in self.mlp.modules():  # DINO's initialisation of the MLP (the last layer keeps torch's)
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        bottleneck_dim = [m for m in mlp.modules() if isinstance(m, nn.Linear)][-1].out_features
        self.last_layer = nn.Linear(bottleneck_dim, num_prototypes, bias=False)  # V; the layer uses V / ||V||

    def forward(self, h: torch.Tensor, freeze_last_layer: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        v = self.last_layer.weight.detach() if freeze_last_layer else self.last_layer.weight  # (K, bottleneck)
        z = self.mlp(h)  # (N, bottleneck)
        with torch.autocast(h.device.type, enabled=False):  # logits / 0.04: bf16 rounding would be noise
            z = F.normalize(z.float(), dim=1)  # (N, bottleneck) unit rows
            return z, z @ F.normalize(v.float(), dim=1).T  # (N, K)


class DINOLoss(nn.Module):
    """Cross-entropy between the centred, sharpened teacher and the student (eq. 1 and Algorithm 1 of
    https://arxiv.org/abs/2104.14294), averaged over view pairs.

    ``student``: ``V`` tensors ``(B, K)`` of student logits, one per view; ``teacher``: ``G <= V`` tensors
    ``(B, K)`` of teacher logits on the global views ``0..G-1``; ``center``: ``(K,)``. For each pair ``(i, j)`` of
    :func:`cross_view_pairs` (student view ``i``, teacher view ``j``, ``i != j``) the term is
    ``-1/B sum_b sum_k softmax((t_j[b] - c) / tau_t)_k log softmax(s_i[b] / tau_s)_k``; the loss is their mean.
    No gradient reaches the teacher. Computed in fp32 whatever the autocast dtype.
    """

    def __init__(self, student_temperature: float = 0.1):
        super().__init__()
        if not student_temperature > 0:
            raise ValueError(f"student_temperature must be > 0, got {student_temperature}")
        self.student_temperature = float(student_temperature)

    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], center: torch.Tensor,
                teacher_temperature: float) -> torch.Tensor:
        if not teacher_temperature > 0:
            raise ValueError(f"teacher_temperature must be > 0, got {teacher_temperature}")
        if len(student) < 2 or not 1 <= len(teacher) <= len(student):
            raise ValueError(f"DINO needs 2 or more student views and 1 to {len(student)} teacher views; got "
                             f"{len(student)} and {len(teacher)}")
        shape = student[0].shape
        if len(shape) != 2 or any(t.shape != shape for t in (*student, *teacher)) or center.shape != shape[1:]:
            raise ValueError(f"student and teacher logits must all be (B, K) of one shape and the centre (K,); got "
                             f"{[tuple(t.shape) for t in student]}, {[tuple(t.shape) for t in teacher]} and "
                             f"{tuple(center.shape)}")
        with torch.autocast(student[0].device.type, enabled=False):
            log_p = [(s.float() / self.student_temperature).log_softmax(dim=1) for s in student]  # V x (B, K)
            c = center.detach().float()  # (K,)
            q = [((t.detach().float() - c) / teacher_temperature).softmax(dim=1) for t in teacher]  # G x (B, K)
            terms = [-(q[j] * log_p[i]).sum(1).mean() for i, j in cross_view_pairs(len(student), len(teacher))]
            return torch.stack(terms).mean()


class DINO(MomentumMethod):
    """Student: backbone -> :class:`DINOHead` (the ``projector``); teacher: their EMA copies (``target_*``,
    :class:`MomentumMethod`), on the global views only. With several processes the centre follows the mean
    teacher output of the whole global batch (averaged over the ranks), so it stays the same on every rank."""

    name = "dino"
    settings_type = DINOSettings
    title, paper = "DINO", "https://arxiv.org/abs/2104.14294"
    card_settings = ("temperature", "teacher_temperature", "num_prototypes")
    divergence_advice = "Lower --lr or raise --temperature"

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        c = cfg.method
        head = DINOHead(projector_from(cfg, backbone.feature_dim, activation="gelu"), c.num_prototypes)
        super().__init__(backbone, cfg, num_images, head)
        self.register_buffer("center", torch.zeros(c.num_prototypes))  # (K,)
        self.loss_fn = DINOLoss(c.temperature)
        self.center_momentum = c.center_momentum
        self.teacher_temperature, self.warmup_teacher_temperature = c.teacher_temperature, c.warmup_teacher_temperature
        self.warmup_teacher_epochs = c.warmup_teacher_epochs
        if self.warmup_teacher_epochs > cfg.train.epochs:
            warnings.warn(f"method.warmup_teacher_epochs={c.warmup_teacher_epochs:g} is longer than the run "
                          f"(train.epochs={cfg.train.epochs}): the teacher temperature warms up from "
                          f"{c.warmup_teacher_temperature:g} to {c.teacher_temperature:g} over the whole run instead.",
                          stacklevel=2)
            self.warmup_teacher_epochs = float(cfg.train.epochs)
        self.freeze_last_layer_epochs = c.freeze_prototypes_epochs  # DINO's freeze_last_layer
        self._clock = StepClock(0.0, cfg.train.epochs)  # from the loop, every step: not state
        self._teacher_mean: torch.Tensor | None = None  # this step's mean teacher logits, until on_step_end

    @property
    def ddp_find_unused_parameters(self) -> bool:  # the frozen last layer gets no gradient in the first epochs
        return self.freeze_last_layer_epochs > 0

    def teacher_temperature_at(self, epoch: float) -> float:
        """Linear from ``warmup_teacher_temperature`` to ``teacher_temperature`` over the warm-up, then constant."""
        if epoch >= self.warmup_teacher_epochs:
            return self.teacher_temperature
        start, end = self.warmup_teacher_temperature, self.teacher_temperature
        return start + (end - start) * epoch / self.warmup_teacher_epochs

    def on_step_start(self, clock: StepClock) -> None:
        super().on_step_start(clock)
        self._clock = clock

    def forward(self, views):
        b, g, clock = len(views[0]), self.num_global, self._clock
        features = self.backbone_features(views)  # [(B, F)] per view, F = backbone.feature_dim
        frozen = clock.epoch < self.freeze_last_layer_epochs
        z, student = self.projector(torch.cat(features), frozen)  # (VB, bottleneck), (VB, K)
        with torch.no_grad():  # teacher in train mode (its own BatchNorm statistics), global views only
            teacher_features = forward_backbone(self.target_backbone, views[:g], self.channels_last)  # [(B, F)]
            _, teacher = self.target_projector(torch.cat(teacher_features))  # (GB, K)
        self._teacher_mean = mean_over_ranks(teacher.mean(0))  # (K,) over the global batch
        temperature = self.teacher_temperature_at(clock.epoch)
        loss = self.loss_fn(student.split(b), teacher.split(b), self.center, temperature)
        return loss, {"embedding_std": embedding_spread(z[:b]), "teacher_temperature": z.new_tensor(temperature),
                      "momentum": self.momentum_log(z)}

    @torch.no_grad()
    def on_step_end(self, clock: StepClock) -> None:
        super().on_step_end(clock)  # EMA of the teacher
        if self._teacher_mean is not None:  # c <- m c + (1 - m) mean(teacher logits of this step's global views)
            self.center.mul_(self.center_momentum).add_(self._teacher_mean.to(self.center.dtype),
                                                        alpha=1 - self.center_momentum)
        self._teacher_mean = None
