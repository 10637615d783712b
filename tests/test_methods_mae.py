"""MAE (``crlf.methods.mae``): patchify and the masked pixel loss against slow references written from the paper,
the encoder sees only the visible patches, the loss ignores what it should, and a ResNet is a usage error."""

from __future__ import annotations

import math

import pytest
import torch

from crlf.config import Config, apply_overrides
from crlf.errors import UsageError
from crlf.methods import method_class
from crlf.methods.mae import MaskedPixelLoss, patchify
from crlf.models.backbones import build_backbone
from crlf.models.encoder import ResNetEncoder

from conftest import REPO


def slow_patchify(images: torch.Tensor, p: int) -> list:
    """Patch (r, c) of image b, in row-major patch order, as the list of its pixels in (row, column, channel)."""
    b, ch, h, w = images.shape
    return [[[float(images[i, k, r * p + y, c * p + x]) for y in range(p) for x in range(p) for k in range(ch)]
             for r in range(h // p) for c in range(w // p)] for i in range(b)]


def slow_masked_loss(pred, target, mask, norm_pix: bool) -> float:
    """He et al., 2021, section 3: mean squared error per masked patch, targets normalised per patch."""
    total, count = 0.0, 0
    for b in range(len(target)):
        for i, patch in enumerate(target[b]):
            if not mask[b][i]:
                continue
            if norm_pix:
                mean = sum(patch) / len(patch)
                var = sum((v - mean) ** 2 for v in patch) / (len(patch) - 1)
                patch = [(v - mean) / math.sqrt(var + 1e-6) for v in patch]
            total += sum((float(pred[b][i][k]) - t) ** 2 for k, t in enumerate(patch)) / len(patch)
            count += 1
    return total / count


def test_patchify_matches_reference():
    images = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(patchify(images, 4), torch.tensor(slow_patchify(images, 4)), rtol=0, atol=0)


@pytest.mark.parametrize("norm_pix", [True, False])
@pytest.mark.parametrize("b, n, k", [(1, 4, 12), (3, 16, 48)])
def test_masked_pixel_loss_matches_reference(norm_pix, b, n, k):
    g = torch.Generator().manual_seed(b * n)
    pred, target = torch.randn(b, n, k, generator=g), torch.randn(b, n, k, generator=g) * 3 + 1
    mask = torch.rand(b, n, generator=g) < 0.75
    mask[:, 0] = True  # at least one masked patch per image
    fast = MaskedPixelLoss(norm_pix)(pred, target, mask)
    assert float(fast) == pytest.approx(slow_masked_loss(pred, target.tolist(), mask.tolist(), norm_pix), rel=1e-5)


def build(arch: str = "vit_tiny", **method):
    cfg = apply_overrides(Config(), {"data": {"image_size": 32}, "model": {"arch": arch}, "method": {"name": "mae", **method},
                                     "train": {"batch_size": 4}})
    torch.manual_seed(0)
    return method_class("mae")(build_backbone(cfg.model, cfg.data.image_size), cfg, 64), cfg


def test_a_resnet_is_a_usage_error_naming_the_accepted_backbones(capsys, tmp_path):
    message = "model.arch=resnet18 is not one. Use model.arch=vit_tiny, vit_small"
    with pytest.raises(UsageError, match=message):  # in the config, before any data is read
        apply_overrides(Config(), {"method": {"name": "mae"}})
    from crlf.cli import main

    assert main(["pretrain", "--config", str(REPO / "configs" / "methods" / "mae.yaml"), "--set", "model.arch=resnet18",
                 "--data", str(tmp_path / "no-data"), "--out", str(tmp_path / "r")]) == 2
    assert message in capsys.readouterr().err
    cfg = apply_overrides(Config(), {"method": {"name": "mae"}, "model": {"arch": "vit_tiny"}})
    with pytest.raises(UsageError, match=message):  # and in the method, whatever backbone it is handed
        method_class("mae")(ResNetEncoder("resnet18"), cfg, 64)


def test_the_encoder_sees_only_the_visible_patches_and_the_loss_only_the_masked_ones():
    method, _ = build(mask_ratio=0.75)
    seen = []
    handle = method.backbone.model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    torch.manual_seed(1)
    loss, logs = method(views)
    handle.remove()
    assert seen == [(8, 1 + 16, 192)]  # 2 views x 4 images; the class token + 16 of the 64 patches of 4 px
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and float(logs["embedding_std"]) > 0
    loss.backward()
    assert method.decoder.mask_token.grad is not None and method.backbone.model.patch_embed.proj.weight.grad is not None
    # The loss is over the masked patches only: the prediction of a visible patch may be anything.
    torch.manual_seed(1)
    encoded, order, grid = method.encode_visible(torch.cat(views), groups=2)
    pred = method.decode(encoded, order, grid)
    mask = torch.ones(order.shape, dtype=torch.bool).scatter(1, order[:, :16], False)
    target = patchify(torch.cat(views), 4)
    changed = torch.where(mask[..., None], pred, pred + 100.0)
    assert float(method.loss_fn(changed, target, mask)) == pytest.approx(float(loss), rel=1e-5)
    assert float(method.loss_fn(pred + 1.0, target, mask)) > float(loss) + 0.5


def test_mae_settings_are_checked():
    for key, value, match in (("mask_ratio", 1.0, "mask_ratio must be in"), ("decoder_dim", 30, "multiple of 4"),
                              ("decoder_depth", 0, "decoder_depth must be >= 1")):
        with pytest.raises(UsageError, match=match):
            apply_overrides(Config(), {"method": {"name": "mae", key: value}, "model": {"arch": "vit_tiny"}})
