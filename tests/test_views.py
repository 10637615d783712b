"""Views from crop specs (multi-crop), the backbone called once per view size, and multi-view NT-Xent."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

from crlf.config import AugmentConfig, Config, CropSpec, apply_overrides, load_config, to_dict
from crlf.data.augment import TensorAugment, ViewSpec, view_specs
from crlf.errors import UsageError
from crlf.methods.base import cross_view_pairs, forward_backbone
from crlf.methods.simclr import NTXentLoss

from conftest import SEED_CONFIG

MULTI_CROP = [{"count": 2}, {"size": 16, "count": 3, "scale": [0.1, 0.4]}]


def images(n=6, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def test_crop_specs_resolve_sizes_scales_and_progressive_resizing():
    cfg = apply_overrides(Config(), {"augment": {"crops": MULTI_CROP, "crop_scale": [0.3, 1.0]}})
    assert cfg.augment.crops == (CropSpec(None, 2, None), CropSpec(16, 3, (0.1, 0.4)))
    assert view_specs(cfg.augment, 32) == [ViewSpec(32, 2, (0.3, 1.0)), ViewSpec(16, 3, (0.1, 0.4))]
    # During 16-px epochs every crop shrinks in proportion: the local crops go to 8 px.
    assert view_specs(cfg.augment, 32, 16) == [ViewSpec(16, 2, (0.3, 1.0)), ViewSpec(8, 3, (0.1, 0.4))]
    assert apply_overrides(Config(), to_dict(cfg)) == cfg  # round trip through the YAML form


def test_default_crops_are_two_views_at_the_image_size():
    cfg = load_config(SEED_CONFIG)
    assert view_specs(cfg.augment, 32) == [ViewSpec(32, 2, cfg.augment.crop_scale)]


def test_multi_crop_views_come_in_spec_order_with_their_sizes():
    aug = TensorAugment(AugmentConfig(), 32)
    specs = [ViewSpec(32, 2, (0.2, 1.0)), ViewSpec(16, 3, (0.1, 0.4))]
    views = aug(images(), torch.Generator().manual_seed(0), specs)
    assert [tuple(v.shape) for v in views] == [(6, 3, 32, 32)] * 2 + [(6, 3, 16, 16)] * 3
    again = aug(images(), torch.Generator().manual_seed(0), specs)
    assert all(torch.equal(a, b) for a, b in zip(views, again))
    assert not torch.equal(views[2], views[3])  # each view draws its own parameters


def test_two_default_views_equal_the_first_two_views_of_a_multi_crop_spec():
    """Local crops are drawn after the global ones: adding them leaves the global views unchanged."""
    aug = TensorAugment(AugmentConfig(), 32)
    pair = aug(images(), torch.Generator().manual_seed(5))
    multi = aug(images(), torch.Generator().manual_seed(5), [ViewSpec(32, 2, (0.2, 1.0)), ViewSpec(16, 2, (0.1, 0.4))])
    assert torch.equal(pair[0], multi[0]) and torch.equal(pair[1], multi[1])


@pytest.mark.parametrize("overrides, message", [
    ({"augment": {"crops": [{"count": 1}]}}, "needs count >= 2"),
    ({"augment": {"crops": [{"count": 2, "sise": 16}]}}, "Did you mean 'size'"),
    ({"augment": {"crops": [{"count": 2}, {"size": 4, "count": 2}]}}, "size must be between 8"),
    ({"augment": {"crops": [{"count": 2}, {"size": 16, "count": 2, "scale": [0.5, 0.1]}]}}, "0 < min <= max <= 1"),
    ({"augment": {"crops": []}}, "non-empty list"),
    ({"augment": {"crops": MULTI_CROP, "backend": "pil"}}, "use the tensor backend for multi-crop"),
    ({"method": {"name": "simclrr"}}, "Did you mean 'simclr'"),
    ({"method": {"name": "mocov4"}}, "method.name must be one of simclr, mocov2, mocov3"),
    ({"method": {"name": "byol", "momentum": 1.2}}, "momentum_final <= 1"),
    ({"method": {"momentum": 0.9}}, "method 'simclr' has no setting 'momentum' (a setting of mocov2, mocov3, byol"),
    ({"method": {"name": "byol", "momentun": 0.9}}, "Did you mean 'momentum'"),
    ({"optim": {"name": "lamb"}}, "optim.name must be one of adam, adamw, sgd, lars"),
])
def test_bad_crop_and_method_settings_are_usage_errors(overrides, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        apply_overrides(Config(), overrides)


class CountingBackbone(nn.Module):
    """Records the batch shape of every call; features = the per-image mean colour (B, 3)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, ...]] = []

    def forward(self, x):
        self.calls.append(tuple(x.shape))
        return x.mean(dim=(2, 3))


def test_backbone_runs_once_per_view_size_and_features_keep_the_view_order():
    views = [torch.randn(4, 3, s, s) for s in (32, 32, 16, 16, 16)]
    backbone = CountingBackbone()
    features = forward_backbone(backbone, views)
    assert sorted(backbone.calls) == [(8, 3, 32, 32), (12, 3, 16, 16)]
    for view, feature in zip(views, features):
        torch.testing.assert_close(feature, view.mean(dim=(2, 3)))


def test_cross_view_pairs():
    assert cross_view_pairs(2, 2) == [(1, 0), (0, 1)]
    assert cross_view_pairs(4, 2) == [(1, 0), (2, 0), (3, 0), (0, 1), (2, 1), (3, 1)]


def slow_multi_positive_ntxent(views: list[torch.Tensor], t: float) -> float:
    """Every view of an image is a positive of every other (loss per anchor: mean over its positives of
    -log(exp(s_ap / t) / sum_{k != a} exp(s_ak / t))), averaged over all anchors; float64 loops."""
    z = [v.double() / v.double().norm(dim=1, keepdim=True) for v in views]
    n, v_count = len(views[0]), len(views)
    rows = [(v, i) for v in range(v_count) for i in range(n)]
    total = 0.0
    for a in rows:
        za = z[a[0]][a[1]]
        denominator = sum(math.exp(float(za @ z[k[0]][k[1]]) / t) for k in rows if k != a)
        positives = [p for p in rows if p != a and p[1] == a[1]]
        total += sum(-math.log(math.exp(float(za @ z[p[0]][p[1]]) / t) / denominator) for p in positives) / len(positives)
    return total / len(rows)


@pytest.mark.parametrize("num_views, n, d, t", [(2, 3, 5, 0.1), (3, 4, 8, 0.5), (4, 2, 3, 0.07), (5, 5, 16, 1.0)])
def test_multi_view_ntxent_matches_the_slow_reference(num_views, n, d, t):
    torch.manual_seed(num_views * 10 + n)
    views = [torch.randn(n, d) for _ in range(num_views)]
    assert NTXentLoss(t)(*views).item() == pytest.approx(slow_multi_positive_ntxent(views, t), rel=1e-5, abs=1e-5)


def test_multi_view_ntxent_is_symmetric_in_the_views():
    torch.manual_seed(0)
    views = [torch.randn(6, 8) for _ in range(3)]
    loss = NTXentLoss(0.2)
    reference = loss(*views)
    for order in itertools.permutations(range(3)):
        torch.testing.assert_close(loss(*[views[i] for i in order]), reference)
