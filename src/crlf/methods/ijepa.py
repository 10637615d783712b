"""I-JEPA (Assran et al., 2023, https://arxiv.org/abs/2301.08243): joint-embedding predictive architecture. From
one context block of an image's patches, a narrow predictor predicts the representations that an EMA target
encoder gives to a few target blocks of the same image; the loss is the mean squared (L2) distance between
predicted and target patch representations (the paper's eq. 1). No pixels are reconstructed and no augmentation
is needed beyond the crop: the targets are representations, normalised per patch (layer norm without affine).

Blocks (section 3 of the paper): ``num_targets`` target blocks, each covering ``target_scale`` of the patch grid
with an aspect ratio in ``target_aspect``, and one context block covering ``context_scale`` (aspect 1), minus
every target patch so the task is not trivial. As in the paper's collator, a block's shape is drawn once per
batch (its position per image) and every image keeps as many context patches as the poorest one.

ViT backbones only (``vit_tiny``, ``vit_small``, ``timm:<a ViT>``). The encoder call, the predictor and the position
code are shared with MAE (:mod:`crlf.methods.vit_tokens`, which also says how masks are drawn with several
processes and on resume); the EMA target is :class:`crlf.methods.base.MomentumMethod`'s, without a projector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from crlf.collectives import world_size
from crlf.config import Config
from crlf.methods.base import MomentumMethod, embedding_spread
from crlf.methods.settings import MomentumSettings, check
from crlf.methods.vit_tokens import (
    MaskTokenTransformer,
    encode_tokens,
    patch_tokens,
    this_ranks_rows,
    vision_transformer,
)

if TYPE_CHECKING:
    from crlf.models.backbones import Backbone


@dataclass(frozen=True)
class IJEPASettings(MomentumSettings):
    """The target encoder's EMA ``momentum`` -> ``momentum_final`` (the paper: 0.996 -> 1.0); the blocks'
    ``num_targets`` (4), ``target_scale`` (0.15-0.2 of the grid), ``target_aspect`` (0.75-1.5) and
    ``context_scale`` (0.85-1.0); the predictor's width, depth and heads (the paper's is narrow: 384 wide for a
    ViT-Huge; a smaller one suits small images and CPUs)."""

    name: str = "ijepa"
    momentum: float = 0.996
    num_targets: int = 4
    target_scale: tuple[float, float] = (0.15, 0.2)
    target_aspect: tuple[float, float] = (0.75, 1.5)
    context_scale: tuple[float, float] = (0.85, 1.0)
    predictor_dim: int = 96
    predictor_depth: int = 2
    predictor_heads: int = 4

    def validate(self) -> None:
        super().validate()
        check(self.num_targets >= 1, f"method.num_targets must be >= 1 (got {self.num_targets}); the paper: 4.")
        for key in ("target_scale", "context_scale"):
            low, high = getattr(self, key)
            check(0 < low <= high <= 1, f"method.{key} must satisfy 0 < min <= max <= 1 (got {[low, high]}).")
        check(0 < self.target_aspect[0] <= self.target_aspect[1],
              f"method.target_aspect must satisfy 0 < min <= max (got {list(self.target_aspect)}).")
        check(self.predictor_depth >= 1, f"method.predictor_depth must be >= 1 (got {self.predictor_depth}).")
        check(self.predictor_heads >= 1 and self.predictor_dim % self.predictor_heads == 0
              and self.predictor_dim % 4 == 0,
              f"method.predictor_dim must be a multiple of 4 (its 2-d sine-cosine position code) and of "
              f"method.predictor_heads (got {self.predictor_dim} and {self.predictor_heads}).")


def block_shape(h: int, w: int, scale: tuple[float, float], aspect: tuple[float, float]) -> tuple[int, int]:
    """A block's rows and columns on an ``h x w`` grid: area ``U(scale) * h * w``, aspect ``U(aspect)`` (rows over
    columns), at least one patch, inside the grid. Draws from torch's global generator."""
    s = scale[0] + (scale[1] - scale[0]) * float(torch.rand(()))
    a = aspect[0] + (aspect[1] - aspect[0]) * float(torch.rand(()))
    area = s * h * w
    return min(h, max(1, round(math.sqrt(area * a)))), min(w, max(1, round(math.sqrt(area / a))))


def place_blocks(n: int, h: int, w: int, rows: int, cols: int) -> torch.Tensor:
    """Patch indices ``(n, rows * cols)`` of one ``rows x cols`` block per image at a random position."""
    top = torch.randint(0, h - rows + 1, (n, 1))
    left = torch.randint(0, w - cols + 1, (n, 1))
    r, c = torch.meshgrid(torch.arange(rows), torch.arange(cols), indexing="ij")
    return (top + r.flatten()[None]) * w + (left + c.flatten()[None])  # (n, rows * cols)


def sample_masks(n: int, h: int, w: int, settings: IJEPASettings) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The context patches ``(n, K)`` and the target blocks ``[(n, T_m)]`` of ``n`` images on an ``h x w`` grid.
    Context patches are never target patches, unless the targets leave an image none (tiny grids): then it
    keeps its context block's first patch."""
    targets = [place_blocks(n, h, w, *block_shape(h, w, settings.target_scale, settings.target_aspect))
               for _ in range(settings.num_targets)]
    side = block_shape(h, w, settings.context_scale, (1.0, 1.0))
    context_block = place_blocks(n, h, w, *side)  # (n, C)
    keep = torch.zeros(n, h * w, dtype=torch.bool).scatter(1, context_block, True)  # (n, N)
    for t in targets:
        keep.scatter_(1, t, False)
    empty = ~keep.any(1)
    keep[empty, context_block[empty, 0]] = True
    k = int(keep.sum(1).min())  # every image keeps as many as the poorest (the paper's collator)
    context = torch.argsort((~keep).int(), dim=1, stable=True)[:, :k]  # (n, K) kept patches, in grid order
    return context, targets


class PatchRegressionLoss(nn.Module):
    """Mean over target blocks of the mean squared distance between predicted and target patch representations:
    ``(1/M) sum_m (1/(B T_m C)) sum_{b,t,c} (pred_m[b,t,c] - target_m[b,t,c])^2``, in fp32.

    ``preds``, ``targets``: ``M`` pairs of ``(B, T_m, C)`` -> scalar."""

    def forward(self, preds: list[torch.Tensor], targets: list[torch.Tensor]) -> torch.Tensor:
        if not preds or len(preds) != len(targets) or any(p.shape != t.shape or p.dim() != 3
                                                          for p, t in zip(preds, targets)):
            raise ValueError(f"the patch regression loss needs M >= 1 pairs of (B, T, C) tensors; got "
                             f"{[tuple(p.shape) for p in preds]} and {[tuple(t.shape) for t in targets]}")
        with torch.autocast(preds[0].device.type, enabled=False):
            return torch.stack([F.mse_loss(p.float(), t.float()) for p, t in zip(preds, targets)]).mean()


class IJEPA(MomentumMethod):
    """Context encoder (the ViT, on the context patches) -> the predictor (:class:`MaskTokenTransformer`): ``Linear``
    to its width + a fixed sine-cosine position code; per target block, a shared mask token at each target
    position -> ``predictor_depth`` Transformer blocks -> ``Linear`` back to the encoder's width at the target
    positions; targets: the EMA encoder on all patches, layer-normed -> :class:`PatchRegressionLoss`."""

    name = "ijepa"
    settings_type = IJEPASettings
    title, paper = "I-JEPA", "https://arxiv.org/abs/2301.08243"
    card_settings = ("num_targets",)
    divergence_advice = "Lower --lr (and raise optim.warmup_epochs: ViTs need a warm-up)"
    needs_vit = True

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        vit = vision_transformer(backbone, self.name)
        super().__init__(backbone, cfg, num_images)  # the target: an EMA copy of the backbone, no projector
        c = cfg.method
        self.settings = c
        self.embedding_dim = vit.embed_dim
        self.predictor = MaskTokenTransformer(vit.embed_dim, c.predictor_dim, c.predictor_depth, c.predictor_heads,
                                              vit.embed_dim)
        self.loss_fn = PatchRegressionLoss()

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> torch.Tensor:
        """The EMA encoder on every patch, layer-normed per patch: ``(B, N, C)``."""
        vit = self.target_backbone.model
        tokens, _ = patch_tokens(vit, images)
        out = encode_tokens(vit, tokens)[:, vit.num_prefix_tokens:]  # (B, N, C)
        return F.layer_norm(out.float(), (out.shape[-1],))

    def predict(self, context: torch.Tensor, context_idx: torch.Tensor, target_idx: torch.Tensor,
                grid: tuple[int, int]) -> torch.Tensor:
        """Predicted representations ``(B, T, C)`` of the patches ``target_idx`` ``(B, T)`` from the encoded context
        patches ``context`` ``(B, K, C)`` at ``context_idx`` ``(B, K)``."""
        pos = self.predictor.position_code(grid, context)  # (N, Dp)
        x = self.predictor.embed(context) + pos[context_idx]  # (B, K, Dp)
        queries = self.predictor.mask_token.to(x.dtype) + pos[target_idx]  # (B, T, Dp)
        return self.predictor(torch.cat([x, queries], dim=1), predict_from=x.shape[1])  # (B, T, C)

    def forward(self, views):
        images = torch.cat(views[:self.num_global])  # (GB, 3, S, S): every global view is an image
        vit = self.backbone.model
        tokens, grid = patch_tokens(vit, images)  # (GB, P + N, C)
        groups, n = self.num_global, len(views[0])
        context_idx, targets = sample_masks(groups * n * world_size(), *grid, self.settings)  # the global batch's
        context_idx, *target_idx = (this_ranks_rows(idx, groups).to(images.device) for idx in (context_idx, *targets))
        context = encode_tokens(vit, tokens, context_idx)[:, vit.num_prefix_tokens:]  # (GB, K, C)
        target = self.targets(images)  # (GB, N, C)
        preds, wanted = [], []
        for idx in target_idx:  # (GB, T_m) each
            preds.append(self.predict(context, context_idx, idx, grid))
            wanted.append(target.gather(1, idx[:, :, None].expand(-1, -1, target.shape[-1])))
        loss = self.loss_fn(preds, wanted)
        features = context[:n].mean(1)  # (B, C) view 0's mean context representation
        self.last_features = features.detach()  # the online probe's
        return loss, {"embedding_std": embedding_spread(features), "momentum": self.momentum_log(loss)}
