"""MAE (He et al., 2021, https://arxiv.org/abs/2111.06377): masked autoencoders. A random 75 % of each image's
patches is dropped; the ViT encoder sees only the visible quarter (cheap: a quarter of the tokens), and a light
Transformer decoder, given the encoded visible patches and a shared mask token at every dropped position,
reconstructs the dropped patches' pixels. The loss is the mean squared error on the masked patches only, against
each patch's pixels normalised by its own mean and variance (the paper's ``norm_pix_loss``, its better setting).

ViT backbones only (``vit_tiny``, ``vit_small``, ``timm:<a ViT>``): the method works on patch tokens. Every
global view is an image to reconstruct (the loop's two views: twice the images per step); local views are not
used. The encoder call, the decoder and the position code are shared with I-JEPA (:mod:`crlf.methods.vit_tokens`,
which also says how masks are drawn with several processes and on resume).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from crlf.collectives import world_size
from crlf.config import Config
from crlf.methods.base import Method, embedding_spread
from crlf.methods.settings import MethodSettings, check
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
class MAESettings(MethodSettings):
    """``mask_ratio``: the share of patches dropped (the paper: 0.75); the decoder's width, depth and heads (the
    paper: 512, 8, 16 for ImageNet; a narrower one suits small images and CPUs); ``norm_pix_loss``: targets
    normalised per patch."""

    name: str = "mae"
    mask_ratio: float = 0.75
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def validate(self) -> None:
        super().validate()
        check(0 < self.mask_ratio < 1, f"method.mask_ratio must be in (0, 1) (got {self.mask_ratio}); the paper: 0.75.")
        check(self.decoder_depth >= 1, f"method.decoder_depth must be >= 1 (got {self.decoder_depth}).")
        check(self.decoder_heads >= 1 and self.decoder_dim % self.decoder_heads == 0 and self.decoder_dim % 4 == 0,
              f"method.decoder_dim must be a multiple of 4 (its 2-d sine-cosine position code) and of "
              f"method.decoder_heads (got {self.decoder_dim} and {self.decoder_heads}).")


def patchify(images: torch.Tensor, patch: int) -> torch.Tensor:
    """``(B, 3, H, W) -> (B, (H/p)(W/p), p*p*3)``: the patches in the ViT's token order (rows of patches, left to
    right), each flattened as ``(row, column, channel)``."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // patch, patch, w // patch, patch)  # (B, C, h, p, w, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (h // patch) * (w // patch), patch * patch * c)


class MaskedPixelLoss(nn.Module):
    """Mean over the masked patches of the mean squared error per patch (eq. in section 3 of the paper):
    ``sum_{b,i} m[b,i] * mean_k (pred[b,i,k] - t[b,i,k])^2 / sum m``, where ``t`` are the target patches,
    each normalised to mean 0 and variance 1 over its own pixels when ``norm_pix`` (variance + 1e-6).

    ``pred``, ``target``: ``(B, N, K)``; ``mask``: ``(B, N)``, True where the patch was dropped -> scalar. fp32."""

    def __init__(self, norm_pix: bool = True):
        super().__init__()
        self.norm_pix = norm_pix

    def forward(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if pred.dim() != 3 or pred.shape != target.shape or mask.shape != pred.shape[:2]:
            raise ValueError(f"the masked pixel loss needs pred and target (B, N, K) and a mask (B, N); got "
                             f"{tuple(pred.shape)}, {tuple(target.shape)}, {tuple(mask.shape)}")
        with torch.autocast(pred.device.type, enabled=False):
            target = target.float()
            if self.norm_pix:
                mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)  # (B, N, 1) unbiased
                target = (target - mean) / (var + 1e-6).sqrt()
            per_patch = (pred.float() - target).pow(2).mean(-1)  # (B, N)
            m = mask.float()
            return (per_patch * m).sum() / m.sum()


class MAE(Method):
    """ViT encoder on the visible patches -> the decoder (:class:`MaskTokenTransformer`): ``Linear`` to its width,
    mask tokens at the dropped positions, a fixed sine-cosine position code, ``decoder_depth`` Transformer blocks,
    ``Linear`` to ``p*p*3`` pixels per patch -> :class:`MaskedPixelLoss`."""

    name = "mae"
    settings_type = MAESettings
    title, paper = "MAE", "https://arxiv.org/abs/2111.06377"
    card_settings = ("mask_ratio",)
    divergence_advice = "Lower --lr (and raise optim.warmup_epochs: ViTs need a warm-up)"
    needs_vit = True

    def __init__(self, backbone: Backbone, cfg: Config, num_images: int):
        super().__init__(backbone, cfg, num_images)
        vit = vision_transformer(backbone, self.name)
        c = cfg.method
        self.mask_ratio = c.mask_ratio
        self.patch = vit.patch_embed.patch_size[0]
        self.embedding_dim = vit.embed_dim  # the collapse watch reads the encoder's class token
        self.decoder = MaskTokenTransformer(vit.embed_dim, c.decoder_dim, c.decoder_depth, c.decoder_heads,
                                            self.patch * self.patch * 3)
        self.loss_fn = MaskedPixelLoss(c.norm_pix_loss)

    def encode_visible(self, images: torch.Tensor, groups: int = 1) -> tuple[torch.Tensor, torch.Tensor, tuple[int, int]]:
        """The encoder on a random ``1 - mask_ratio`` of the patches: ``(B, P + V, C)`` (P prefix tokens: the class
        token), the patch order ``(B, N)`` (its first V entries are the visible patches) and the grid ``(h, w)``.
        ``images`` are ``groups`` views of one batch, one after the other (their masks are drawn view by view)."""
        vit = self.backbone.model
        tokens, grid = patch_tokens(vit, images)  # (B, P + N, C): position code added, class token in front
        b, n = tokens.shape[0], tokens.shape[1] - vit.num_prefix_tokens
        visible = max(1, round(n * (1 - self.mask_ratio)))
        noise = this_ranks_rows(torch.cat([torch.rand(b // groups * world_size(), n, device=images.device)
                                           for _ in range(groups)]), groups)  # (B, N)
        order = noise.argsort(dim=1)  # (B, N) a random permutation per image
        return encode_tokens(vit, tokens, order[:, :visible]), order, grid  # (B, P + V, C)

    def decode(self, encoded: torch.Tensor, order: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """Predicted pixels of every patch, ``(B, N, p*p*3)``, from the encoded visible tokens ``(B, P + V, C)``."""
        p = self.backbone.model.num_prefix_tokens
        x = self.decoder.embed(encoded)  # (B, P + V, Cd)
        b, n, d = x.shape[0], order.shape[1], x.shape[2]
        visible = x.shape[1] - p
        full = self.decoder.mask_tokens(b, n, x)  # (B, N, Cd): a mask token everywhere ...
        full = full.scatter(1, order[:, :visible, None].expand(-1, -1, d), x[:, p:])  # ... but the visible ones
        full = full + self.decoder.position_code(grid, x)  # (B, N, Cd)
        return self.decoder(torch.cat([x[:, :p], full], dim=1), predict_from=p)  # (B, N, p*p*3)

    def forward(self, views):
        images = torch.cat(views[:self.num_global])  # (GB, 3, S, S): every global view is an image to rebuild
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        encoded, order, grid = self.encode_visible(images, groups=self.num_global)
        pred = self.decode(encoded, order, grid)  # (GB, N, p*p*3)
        visible = encoded.shape[1] - self.backbone.model.num_prefix_tokens
        mask = torch.ones_like(order, dtype=torch.bool).scatter(1, order[:, :visible], False)  # (GB, N) dropped
        loss = self.loss_fn(pred, patchify(images.float(), self.patch), mask)
        self.last_features = encoded[:len(views[0]), 0].detach()  # the class token of view 0: the online probe's
        return loss, {"embedding_std": embedding_spread(encoded[:len(views[0]), 0])}
