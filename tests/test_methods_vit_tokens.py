"""What MAE and I-JEPA share (``crlf.methods.vit_tokens``): the position code, the encoder on kept patches, the
mask-token head, and the rows a rank keeps of masks drawn for the global batch."""

from __future__ import annotations

import torch

from crlf.config import Config, apply_overrides
from crlf.methods.vit_tokens import (
    MaskTokenTransformer,
    encode_tokens,
    patch_tokens,
    sincos_2d,
    this_ranks_rows,
    vision_transformer,
)
from crlf.models.backbones import build_backbone


def test_sincos_position_code_is_distinct_per_patch():
    code = sincos_2d(4, 4, 16)
    assert code.shape == (16, 16) and torch.cdist(code, code).fill_diagonal_(1).min() > 0.1


def test_the_encoder_sees_the_prefix_and_only_the_kept_patches_in_their_order():
    cfg = apply_overrides(Config(), {"model": {"arch": "vit_tiny"}})
    torch.manual_seed(0)
    vit = vision_transformer(build_backbone(cfg.model, 32), "mae")
    seen = []
    handle = vit.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0]))
    tokens, grid = patch_tokens(vit, torch.randn(2, 3, 32, 32))  # (2, 1 + 64, 192)
    kept = torch.tensor([[5, 0, 63], [1, 2, 3]])
    out = encode_tokens(vit, tokens, kept)
    handle.remove()
    assert grid == (8, 8) and out.shape == (2, 1 + 3, 192)
    chosen = torch.stack([tokens[0, 1:][[5, 0, 63]], tokens[1, 1:][[1, 2, 3]]])  # (2, 3, 192)
    torch.testing.assert_close(seen[0], vit.norm_pre(torch.cat([tokens[:, :1], chosen], dim=1)))
    assert encode_tokens(vit, tokens).shape == (2, 1 + 64, 192)  # every patch when none is chosen


def test_the_mask_token_head_predicts_the_positions_asked_for():
    torch.manual_seed(0)
    head = MaskTokenTransformer(in_dim=24, dim=16, depth=1, heads=4, out_dim=5)
    x = head.embed(torch.randn(3, 7, 24))  # (3, 7, 16)
    assert head.mask_tokens(3, 4, x).shape == (3, 4, 16) and head.position_code((2, 2), x).shape == (4, 16)
    assert head(torch.cat([x, head.mask_tokens(3, 4, x)], dim=1), predict_from=7).shape == (3, 4, 5)


def test_one_process_keeps_every_row_of_every_view():
    rows = torch.arange(12).reshape(6, 2)  # 2 views x 3 images
    assert torch.equal(this_ranks_rows(rows, groups=2), rows)
