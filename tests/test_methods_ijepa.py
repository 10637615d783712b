"""I-JEPA (``crlf.methods.ijepa``): the blocks, the loss against a slow reference from the paper's eq. 1, the
context encoder's input, the EMA target, and the ViT-only rule. (Resume after SIGKILL and 2 processes = 1 run
for every registered method in tests/test_methods.py and tests/test_distributed.py.)"""

from __future__ import annotations

import pytest
import torch

from crlf.config import Config, apply_overrides
from crlf.errors import UsageError
from crlf.methods import method_class
from crlf.methods.base import StepClock
from crlf.methods.ijepa import IJEPASettings, PatchRegressionLoss, sample_masks
from crlf.models.backbones import build_backbone
from crlf.models.encoder import ResNetEncoder


def slow_loss(preds, targets) -> float:
    """Eq. 1 of the paper, averaged: for each target block m, the mean over images, patches and channels of the
    squared difference; then the mean over blocks. Float64 loops."""
    total = 0.0
    for p, t in zip(preds, targets):
        b, n, c = p.shape
        block = 0.0
        for i in range(b):
            for j in range(n):
                for k in range(c):
                    block += (float(p[i, j, k]) - float(t[i, j, k])) ** 2
        total += block / (b * n * c)
    return total / len(preds)


@pytest.mark.parametrize("shapes", [[(2, 3, 4)], [(1, 1, 2), (3, 5, 2)], [(4, 2, 8), (4, 3, 8), (4, 1, 8)]])
def test_the_loss_against_the_papers_equation(shapes):
    gen = torch.Generator().manual_seed(len(shapes))
    preds = [torch.randn(*s, generator=gen) for s in shapes]
    targets = [torch.randn(*s, generator=gen) for s in shapes]
    assert float(PatchRegressionLoss()(preds, targets)) == pytest.approx(slow_loss(preds, targets), rel=1e-5)
    assert float(PatchRegressionLoss()(targets, targets)) == 0.0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert PatchRegressionLoss()([p.bfloat16() for p in preds], targets).dtype == torch.float32
    with pytest.raises(ValueError, match="needs M >= 1 pairs"):
        PatchRegressionLoss()(preds, targets[:-1] + [targets[-1][..., :-1]])  # a channel short


@pytest.mark.parametrize("grid", [(8, 8), (4, 4), (3, 5)])
def test_blocks_lie_on_the_grid_and_the_context_never_holds_a_target(grid):
    h, w = grid
    torch.manual_seed(0)
    settings = IJEPASettings()
    context, targets = sample_masks(6, h, w, settings)
    assert len(targets) == 4 and context.shape[0] == 6 and context.shape[1] >= 1
    for t in targets:
        assert t.shape[0] == 6 and int(t.min()) >= 0 and int(t.max()) < h * w
        assert all(len(set(row.tolist())) == t.shape[1] for row in t)  # a block: distinct patches
    for i in range(6):
        ctx = set(context[i].tolist())
        assert len(ctx) == context.shape[1]
        hit = ctx & set(torch.cat([t[i] for t in targets]).tolist())
        assert not hit or len(ctx) == 1  # only a tiny grid's fallback patch may be a target's
    if (h, w) == (8, 8):
        # 15-20 % of 64 patches per target block; a context block of 85-100 %, minus the targets
        assert all(6 <= t.shape[1] <= 16 for t in targets) and context.shape[1] < 64


def build(**method):
    cfg = apply_overrides(Config(), {"data": {"image_size": 32}, "model": {"arch": "vit_tiny"}, "method": {"name": "ijepa", **method},
                                     "train": {"batch_size": 4}})
    torch.manual_seed(0)
    return method_class("ijepa")(build_backbone(cfg.model, cfg.data.image_size), cfg, 64), cfg


def test_the_encoder_sees_the_context_the_target_sees_all_and_follows_by_ema():
    method, _ = build()
    seen = []
    handle = method.backbone.model.blocks[0].register_forward_hook(lambda m, i, o: seen.append(i[0].shape))
    target_seen = []
    handle2 = method.target_backbone.model.blocks[0].register_forward_hook(
        lambda m, i, o: target_seen.append(i[0].shape))
    views = [torch.randn(4, 3, 32, 32) for _ in range(2)]
    torch.manual_seed(1)
    loss, logs = method(views)
    handle.remove()
    handle2.remove()
    assert len(seen) == 1 and seen[0][0] == 8 and 1 < seen[0][1] < 1 + 64  # the class token + a context block
    assert target_seen == [(8, 1 + 64, 192)]  # every patch of both views
    assert loss.dtype == torch.float32 and torch.isfinite(loss) and float(logs["embedding_std"]) > 0
    loss.backward()
    assert method.predictor.mask_token.grad is not None and method.backbone.model.patch_embed.proj.weight.grad is not None
    assert all(p.grad is None for p in method.target_backbone.parameters())  # no gradient into the target
    groups = method.param_groups(0.0, False)
    optimised = {id(p) for g in groups for p in g["params"]}
    assert not optimised & {id(p) for p in method.target_backbone.parameters()}
    # the EMA: target <- m * target + (1 - m) * online
    online = method.backbone.model.patch_embed.proj.weight
    target = method.target_backbone.model.patch_embed.proj.weight
    with torch.no_grad():
        online.add_(1.0)
    before = target.detach().clone()
    method.on_step_end(StepClock(0.0, 10))  # progress 0: the first momentum, 0.996
    torch.testing.assert_close(target, 0.996 * before + 0.004 * online.detach())


def test_a_resnet_is_a_usage_error_naming_the_vits():
    message = "model.arch=resnet18 is not one. Use model.arch=vit_tiny, vit_small"
    with pytest.raises(UsageError, match=message):
        apply_overrides(Config(), {"method": {"name": "ijepa"}})
    cfg = apply_overrides(Config(), {"method": {"name": "ijepa"}, "model": {"arch": "vit_tiny"}})
    with pytest.raises(UsageError, match=message):
        method_class("ijepa")(ResNetEncoder("resnet18"), cfg, 64)


def test_ijepa_settings_are_checked():
    for key, value, match in (("num_targets", 0, "num_targets must be >= 1"),
                              ("target_scale", [0.3, 0.2], "target_scale must satisfy"),
                              ("predictor_dim", 30, "multiple of 4"),
                              ("temperature", 0.1, "has no setting 'temperature'")):
        with pytest.raises(UsageError, match=match):
            apply_overrides(Config(), {"method": {"name": "ijepa", key: value}, "model": {"arch": "vit_tiny"}})
