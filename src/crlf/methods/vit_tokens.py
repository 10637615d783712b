"""What the ViT-token methods (MAE, I-JEPA) share: the patch tokens of a timm ViT, the encoder on a subset of them,
the fixed 2-d sine-cosine position code, the narrow Transformer head that fills dropped positions with a learned
mask token (MAE's decoder, I-JEPA's predictor), and drawing masks for the global batch with several processes.

Both methods draw their masks from torch's global generator, which the checkpoint holds, so a resumed run draws
the same masks; with several processes every rank draws the global batch's masks and keeps its own rows
(:func:`this_ranks_rows`), so a run on W processes masks each image as one process would.
"""

from __future__ import annotations

import torch
from timm.models.vision_transformer import Block
from torch import nn

from crlf.collectives import shard
from crlf.errors import UsageError

VIT_PARTS = ("patch_embed", "_pos_embed", "norm_pre", "blocks", "norm", "num_prefix_tokens", "embed_dim")


def vision_transformer(backbone: nn.Module, method: str) -> nn.Module:
    """The timm ``VisionTransformer`` inside ``backbone``, for the methods that work on patch tokens (MAE, I-JEPA);
    any other backbone is a usage error that names the ones they accept."""
    model = getattr(backbone, "model", None)
    if model is None or not all(hasattr(model, part) for part in VIT_PARTS):
        arch = getattr(backbone, "arch", type(backbone).__name__)
        raise UsageError(f"{method} works on the patches of a Vision Transformer; model.arch={arch} is not one. Use "
                         f"model.arch=vit_tiny, vit_small or timm:<a ViT> (e.g. timm:vit_tiny_patch16_224), as "
                         f"configs/methods/{method}.yaml does.")
    return model


def patch_tokens(vit: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """A timm ViT's patch tokens with their position code, prefix (class) tokens first: ``(B, P + N, C)``, and
    the patch grid ``(h, w)`` (views of any size: timm's dynamic image size gives ``(B, h, w, C)`` tokens)."""
    tokens = vit.patch_embed(images)  # (B, h, w, C) with dynamic image sizes, else (B, N, C)
    h, w = tokens.shape[1:3] if tokens.dim() == 4 else vit.patch_embed.grid_size
    return vit._pos_embed(tokens), (int(h), int(w))


def encode_tokens(vit: nn.Module, tokens: torch.Tensor, kept: torch.Tensor | None = None) -> torch.Tensor:
    """The ViT's Transformer on its prefix tokens and the patches ``kept`` ``(B, K)`` (every patch when None):
    ``(B, P + N, C)`` tokens from :func:`patch_tokens` -> ``(B, P + K, C)``, prefix first, patches in ``kept``'s
    order. The encoder sees only the kept patches, which is what makes MAE's encoder cheap."""
    if kept is not None:
        p = vit.num_prefix_tokens
        patches = tokens[:, p:]  # (B, N, C)
        chosen = patches.gather(1, kept[:, :, None].expand(-1, -1, patches.shape[-1]))  # (B, K, C)
        tokens = torch.cat([tokens[:, :p], chosen], dim=1)  # (B, P + K, C)
    return vit.norm(vit.blocks(vit.norm_pre(tokens)))


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """MAE's fixed 2-d sine-cosine position code of an ``h x w`` grid: ``(h*w, dim)``, half the channels for the
    row, half for the column (computed per grid: views of any size)."""
    def one_axis(positions: torch.Tensor, d: int) -> torch.Tensor:  # (n,) -> (n, d)
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64, device=device) / (d // 2))
        angles = positions.double()[:, None] * omega[None]  # (n, d/2)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    rows, cols = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    return torch.cat([one_axis(rows.flatten(), dim // 2), one_axis(cols.flatten(), dim // 2)], dim=1).float()


def this_ranks_rows(rows: torch.Tensor, groups: int) -> torch.Tensor:
    """Masks drawn for ``groups`` views of the global batch, one view after the other, ``(groups * W * b, ...)``
    -> this rank's rows of each view, ``(groups * b, ...)``, in the order of the rank's own views."""
    return torch.cat([shard(part) for part in rows.chunk(groups)])


class MaskTokenTransformer(nn.Module):
    """A narrow Transformer over encoded tokens and learned mask tokens: MAE's decoder and I-JEPA's predictor.

    ``embed``: ``Linear`` from the encoder's width to ``dim``; ``mask_token``: one learned ``(1, 1, dim)`` token put
    wherever the encoder saw nothing; :meth:`position_code`: the fixed sine-cosine code of the patch grid;
    ``forward``: ``depth`` timm Transformer blocks -> ``LayerNorm`` -> ``Linear`` to ``out_dim`` on the positions
    asked for. Narrow (``dim`` below the encoder's width): the paper's decoder and predictor are, and it suits small
    images and CPUs."""

    def __init__(self, in_dim: int, dim: int, depth: int, heads: int, out_dim: int):
        super().__init__()
        self.embed = nn.Linear(in_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)  # as MAE's and I-JEPA's code
        self.blocks = nn.Sequential(*[Block(dim, heads, qkv_bias=True) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, out_dim)

    @property
    def dim(self) -> int:
        return self.mask_token.shape[-1]

    def position_code(self, grid: tuple[int, int], like: torch.Tensor) -> torch.Tensor:
        """The ``(N, dim)`` sine-cosine code of the patch grid, on ``like``'s device and in its dtype."""
        return sincos_2d(*grid, self.dim, like.device).to(like.dtype)

    def mask_tokens(self, batch: int, count: int, like: torch.Tensor) -> torch.Tensor:
        """``(batch, count, dim)`` copies of the mask token in ``like``'s dtype (autocast's, when on)."""
        return self.mask_token.expand(batch, count, self.dim).to(like.dtype)

    def forward(self, sequence: torch.Tensor, predict_from: int) -> torch.Tensor:
        """``(B, L, dim)`` tokens -> ``(B, L - predict_from, out_dim)``: the predictions for the positions from
        ``predict_from`` on (the earlier ones, the encoded context, only inform them)."""
        x = self.norm(self.blocks(sequence))  # (B, L, dim)
        return self.out(x[:, predict_from:])
