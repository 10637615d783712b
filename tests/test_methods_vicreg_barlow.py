"""VICReg and Barlow Twins losses (``crlf.methods.vicreg``, ``crlf.methods.barlowtwins``) against slow float64
references written from the papers' equations, hypothesis properties, known values, autocast behaviour,
and the two methods' forward passes (pairs of views, multi-crop, logs) on a tiny stand-in backbone."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from crlf.config import Config, apply_overrides
from crlf.methods.barlowtwins import BarlowTwins, BarlowTwinsLoss
from crlf.methods.base import cross_view_pairs
from crlf.methods.vicreg import VICReg, VICRegLoss

SETTINGS = settings(max_examples=40, deadline=None)


# -- slow references: explicit loops over the batch and the dimensions, float64 -------------------------------
def rows(z: torch.Tensor) -> list[list[float]]:
    return z.double().tolist()


def slow_vicreg_terms(z1, z2, eps=1e-4):
    """(invariance, variance, covariance) from Bardes et al., 2022, eqs. 1-5 (and their code's / 2)."""
    a, b = rows(z1), rows(z2)
    n, d = len(a), len(a[0])
    invariance = sum((a[i][k] - b[i][k]) ** 2 for i in range(n) for k in range(d)) / (n * d)

    def mean(z, k):
        return sum(z[i][k] for i in range(n)) / n

    def cov(z, k, m):  # unbiased covariance of dimensions k and m over the batch
        mk, mm = mean(z, k), mean(z, m)
        return sum((z[i][k] - mk) * (z[i][m] - mm) for i in range(n)) / (n - 1)

    def v(z):  # mean over dimensions of the hinge on the regularised std
        return sum(max(0.0, 1 - math.sqrt(cov(z, k, k) + eps)) for k in range(d)) / d

    def c(z):  # squared off-diagonal covariances, / d
        return sum(cov(z, k, m) ** 2 for k in range(d) for m in range(d) if k != m) / d

    return invariance, (v(a) + v(b)) / 2, c(a) + c(b)


def slow_vicreg(z1, z2, sim, var, cov):
    inv, v, c = slow_vicreg_terms(z1, z2)
    return sim * inv + var * v + cov * c


def slow_barlow(z1, z2, lam, eps=1e-5):
    """Zbontar et al., 2021, eqs. 1-2: standardise each dimension over the batch (biased std, as BatchNorm),
    C_ij = sum_b z1_bi z2_bj / B, loss = sum_i (1 - C_ii)^2 + lam * sum_{i != j} C_ij^2."""
    a, b = rows(z1), rows(z2)
    n, d = len(a), len(a[0])

    def standardise(z):
        out = [[0.0] * d for _ in range(n)]
        for k in range(d):
            m = sum(z[i][k] for i in range(n)) / n
            s = math.sqrt(sum((z[i][k] - m) ** 2 for i in range(n)) / n + eps)
            for i in range(n):
                out[i][k] = (z[i][k] - m) / s
        return out

    a, b = standardise(a), standardise(b)
    loss = 0.0
    for k in range(d):
        for m in range(d):
            c = sum(a[i][k] * b[i][m] for i in range(n)) / n
            loss += (1 - c) ** 2 if k == m else lam * c ** 2
    return loss


def spread_pair(batch, dim, seed):
    """Two correlated (B, D) batches with per-dimension scales from 0.3 to 2 (some std below 1, some above)."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.3, 2.0, dim)
    z1 = torch.randn(batch, dim, generator=g) * scale + torch.randn(dim, generator=g)
    return z1, z1 + 0.5 * torch.randn(batch, dim, generator=g) * scale


@pytest.mark.parametrize("batch", [2, 3, 8, 17])
@pytest.mark.parametrize("dim", [1, 4, 24])
@pytest.mark.parametrize("weights", [(25.0, 25.0, 1.0), (1.0, 0.0, 0.0), (0.0, 3.0, 0.5)])
def test_vicreg_matches_slow_reference(batch, dim, weights):
    z1, z2 = spread_pair(batch, dim, batch * 100 + dim)
    loss = VICRegLoss(*weights)
    fast = loss(z1, z2)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), torch.tensor(slow_vicreg(z1, z2, *weights), dtype=torch.float64),
                               rtol=1e-4, atol=1e-4)
    for term, slow in zip(loss.terms(z1, z2), slow_vicreg_terms(z1, z2)):
        assert term.item() == pytest.approx(slow, rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("batch", [2, 3, 8, 17])
@pytest.mark.parametrize("dim", [1, 4, 24])
@pytest.mark.parametrize("lam", [0.0, 0.0051, 1.0])
def test_barlow_matches_slow_reference(batch, dim, lam):
    z1, z2 = spread_pair(batch, dim, batch * 100 + dim)
    fast = BarlowTwinsLoss(lam)(z1, z2)
    assert fast.dtype == torch.float32
    assert fast.item() == pytest.approx(slow_barlow(z1, z2, lam), rel=1e-4, abs=1e-4)


def test_barlow_matches_the_papers_batchnorm_code():
    """The authors' code: bn = BatchNorm1d(D, affine=False); c = bn(z1).T @ bn(z2) / B; on + lambda * off."""
    z1, z2 = spread_pair(32, 16, 7)
    bn = nn.BatchNorm1d(16, affine=False)
    c = bn(z1).T @ bn(z2) / 32
    on_diag = (torch.diagonal(c) - 1).pow(2).sum()
    off_diag = (c.pow(2).sum() - torch.diagonal(c).pow(2).sum())
    expected = on_diag + 0.0051 * off_diag
    torch.testing.assert_close(BarlowTwinsLoss(0.0051)(z1, z2), expected, rtol=1e-5, atol=1e-5)


# -- properties ----------------------------------------------------------------------------------------------
@st.composite
def view_pairs(draw, min_n: int = 2, max_n: int = 10, max_d: int = 8):
    """Two ``(N, D)`` float32 tensors of moderate values (exact zeros and repeats included)."""
    n, d = draw(st.integers(min_n, max_n)), draw(st.integers(1, max_d))
    values = st.floats(-10, 10, width=32, allow_subnormal=False)
    return (torch.from_numpy(draw(arrays(np.float32, (n, d), elements=values))),
            torch.from_numpy(draw(arrays(np.float32, (n, d), elements=values))))


def spread_batch(data, n: int, d: int, min_std: float = 0.5, max_std: float = 4.0, unbiased: bool = False):
    """A ``(n, d)`` batch whose dimension ``k`` has mean ``mu_k`` and std exactly ``s_k >= min_std`` (unit noise
    from a drawn seed, standardised, then scaled): batch statistics are what these properties are about."""
    noise = torch.randn(n, d, generator=torch.Generator().manual_seed(data.draw(st.integers(0, 2**31))),
                        dtype=torch.float64)
    noise = (noise - noise.mean(0)) / noise.std(0, unbiased=unbiased)
    stds = torch.tensor(data.draw(st.lists(st.floats(min_std, max_std, allow_subnormal=False), min_size=d, max_size=d)))  # (d,)
    means = torch.tensor(data.draw(st.lists(st.floats(-5, 5, allow_subnormal=False), min_size=d, max_size=d)))  # (d,)
    return (means.double() + stds.double() * noise).float()  # (n, d)


shapes = st.tuples(st.integers(2, 10), st.integers(1, 8))


def close(a, b, tol=1e-4):
    return torch.allclose(a, b, rtol=tol, atol=tol)


@SETTINGS
@given(views=view_pairs(), data=st.data())
def test_permuting_the_batch_jointly_changes_nothing(views, data):
    z1, z2 = views
    perm = torch.tensor(data.draw(st.permutations(range(len(z1)))))
    for loss in (VICRegLoss(25.0, 25.0, 1.0), BarlowTwinsLoss(0.0051)):
        # Sums of up to D^2 squared statistics of values up to 10: compare relative to the size of the loss.
        assert close(loss(z1, z2), loss(z1[perm], z2[perm]), tol=1e-4)


@SETTINGS
@given(views=view_pairs())
def test_swapping_the_branches_changes_nothing(views):
    z1, z2 = views
    for loss in (VICRegLoss(25.0, 25.0, 1.0), BarlowTwinsLoss(0.0051)):
        assert close(loss(z1, z2), loss(z2, z1))


@SETTINGS
@given(views=view_pairs())
def test_vicreg_invariance_term_is_zero_for_identical_branches(views):
    z, _ = views
    invariance, _, _ = VICRegLoss().terms(z, z.clone())
    assert invariance.item() == 0.0


@SETTINGS
@given(shape=shapes, data=st.data())
def test_barlow_diagonal_term_is_zero_for_identical_branches(shape, data):
    z = spread_batch(data, *shape, min_std=0.3)
    on_diagonal, _ = BarlowTwinsLoss().terms(z, z.clone())
    # C_ii = var / (var + eps): 1 up to eps / var <= 1.2e-4 per dimension.
    assert on_diagonal.item() < 1e-6


@SETTINGS
@given(shape=shapes, data=st.data())
def test_barlow_is_invariant_to_a_per_dimension_affine_map(shape, data):
    n, d = shape
    z1, z2 = spread_batch(data, n, d), spread_batch(data, n, d)  # every std >= 0.5, so eps stays negligible
    scale = torch.tensor(data.draw(st.lists(st.floats(0.5, 4.0, allow_subnormal=False), min_size=d, max_size=d)))  # (D,) > 0
    shift = torch.tensor(data.draw(st.lists(st.floats(-5, 5, allow_subnormal=False), min_size=d, max_size=d)))  # (D,)
    side = data.draw(st.sampled_from([0, 1]))
    moved = [z1, z2]
    moved[side] = moved[side] * scale + shift
    loss = BarlowTwinsLoss(0.0051)
    # Standardisation removes the map, up to eps in the variance (relative 1e-5 / 0.0625 here).
    assert close(loss(z1, z2), loss(*moved), tol=1e-3)


@SETTINGS
@given(shape=shapes, data=st.data())
def test_vicreg_variance_term_is_zero_when_every_std_is_at_least_one(shape, data):
    z1, z2 = (spread_batch(data, *shape, min_std=1.0, unbiased=True) for _ in range(2))
    _, variance, _ = VICRegLoss().terms(z1, z2)
    assert variance.item() == 0.0


# -- known values ----------------------------------------------------------------------------------------------
def test_vicreg_known_values():
    loss = VICRegLoss(25.0, 25.0, 1.0)
    collapsed = torch.zeros(6, 4)  # every std 0: hinge 1 - sqrt(1e-4) = 0.99 in every dimension
    assert [t.item() for t in loss.terms(collapsed, collapsed)] == pytest.approx([0.0, 0.99, 0.0])
    assert loss(collapsed, collapsed).item() == pytest.approx(25 * 0.99)
    # Two identical dimensions [1, -1]: unbiased var 2 (no hinge), covariance 2 twice -> (4 + 4) / 2 per branch.
    z = torch.tensor([[1.0, 1.0], [-1.0, -1.0]])
    assert [t.item() for t in loss.terms(z, z)] == pytest.approx([0.0, 0.0, 8.0])
    assert loss(z, z + 1).item() == pytest.approx(25 * 1.0 + 8.0)  # a shift of 1: MSE 1, statistics unchanged


def test_barlow_known_values():
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]])  # standardised, uncorrelated columns
    loss = BarlowTwinsLoss(0.5)
    assert loss(z, z).item() == pytest.approx(0.0, abs=1e-8)  # C = I (up to eps)
    assert loss(z, -z).item() == pytest.approx(8.0, rel=1e-4)  # C = -I: (1 + 1)^2 per dimension
    assert loss(z, z.flip(1)).item() == pytest.approx(2.0 + 0.5 * 2.0, rel=1e-4)  # C = [[0, 1], [1, 0]]


# -- dtype, autocast, argument checks ------------------------------------------------------------------------
@pytest.mark.parametrize("loss", [VICRegLoss(25.0, 25.0, 1.0), BarlowTwinsLoss(0.0051)],
                         ids=["vicreg", "barlow"])
def test_fp32_result_and_finite_gradients_under_bf16_autocast(loss):
    torch.manual_seed(0)
    x = torch.randn(16, 32, requires_grad=True)
    layer = nn.Linear(32, 24)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z1, z2 = layer(x), layer(x + 0.1 * torch.randn(16, 32))  # (16, 24) bf16 each
        assert z1.dtype == torch.bfloat16
        value = loss(z1, z2)
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, loss(z1.float(), z2.float()))  # the same inputs, computed in fp32
    value.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())


@pytest.mark.parametrize("loss", [VICRegLoss(), BarlowTwinsLoss()], ids=["vicreg", "barlow"])
def test_a_batch_of_one_is_a_clear_error(loss):
    with pytest.raises(ValueError, match="batch of at least 2.*got batch size 1"):
        loss(torch.randn(1, 8), torch.randn(1, 8))


@pytest.mark.parametrize("loss", [VICRegLoss(), BarlowTwinsLoss()], ids=["vicreg", "barlow"])
def test_mismatched_shapes_are_a_clear_error(loss):
    with pytest.raises(ValueError, match=r"\(B, D\)"):
        loss(torch.randn(4, 8), torch.randn(4, 7))


@pytest.mark.parametrize("kwargs", [{"sim_weight": -1.0}, {"var_weight": -0.1}, {"cov_weight": float("nan")}])
def test_vicreg_rejects_negative_weights(kwargs):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be >= 0"):
        VICRegLoss(**kwargs)


def test_barlow_rejects_a_negative_lambda():
    with pytest.raises(ValueError, match="redundancy_weight must be >= 0"):
        BarlowTwinsLoss(-0.01)


# -- the methods ---------------------------------------------------------------------------------------------
class TinyBackbone(nn.Module):
    """(B, 3, S, S) -> (B, 12) for any S: a stand-in for the ResNet with the same interface."""

    feature_dim = 12

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 12), nn.ReLU())

    def forward(self, x):
        return self.net(x)


def tiny_method(cls, crops):
    cfg = apply_overrides(Config(), {"model": {"proj_hidden_dim": 16, "proj_out_dim": 8, "proj_layers": 3,
                                               "proj_batchnorm": True}, "augment": {"crops": crops},
                                     "method": {"name": cls.name}})
    torch.manual_seed(0)
    return cls(TinyBackbone(), cfg, 100)


@pytest.mark.parametrize("cls, keys", [(VICReg, {"invariance", "variance", "covariance"}),
                                       (BarlowTwins, {"on_diagonal", "redundancy"})], ids=["vicreg", "barlow"])
@pytest.mark.parametrize("crops", [[{"count": 2}], [{"count": 2}, {"size": 16, "count": 3}]],
                         ids=["2", "multicrop"])
def test_method_loss_is_the_mean_over_cross_view_pairs(cls, keys, crops):
    method = tiny_method(cls, crops).eval()  # eval: BatchNorm uses running stats, so per-view calls agree
    assert method.embedding_dim == 8
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(6, 3, 32, 32, generator=g) for _ in range(2)]
    views += [torch.randn(6, 3, 16, 16, generator=g) for _ in range(sum(c["count"] for c in crops) - 2)]
    loss, logs = method(views)
    assert set(logs) == {"embedding_std"} | keys and all(not v.requires_grad for v in logs.values())
    z = [method.projector(method.backbone(v)) for v in views]  # (6, 8) per view
    pairs = cross_view_pairs(len(views), 2)
    expected = torch.stack([method.loss_fn(z[i], z[j]) for i, j in pairs]).mean()
    torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cls", [VICReg, BarlowTwins], ids=["vicreg", "barlow"])
def test_method_trains_every_parameter(cls):
    method = tiny_method(cls, [{"count": 2}, {"size": 16, "count": 2}]).train()
    views = [torch.randn(6, 3, 32, 32) for _ in range(2)] + [torch.randn(6, 3, 16, 16) for _ in range(2)]
    loss, logs = method(views)
    loss.backward()
    assert torch.isfinite(loss) and 0 < logs["embedding_std"].item() <= 1 / math.sqrt(method.embedding_dim) + 1e-6
    for name, p in method.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_barlow_loss_scale_multiplies_the_loss_and_nothing_else():
    from crlf.config import Config, apply_overrides
    from crlf.methods.barlowtwins import BarlowTwins
    from crlf.models.encoder import ResNetEncoder

    views = [torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(i)) for i in range(2)]
    losses = []
    for scale in (1.0, 0.1):
        torch.manual_seed(0)
        cfg = apply_overrides(Config(), {"method": {"name": "barlowtwins", "loss_scale": scale},
                                         "model": {"proj_hidden_dim": 16, "proj_out_dim": 8, "proj_layers": 3,
                                                   "proj_batchnorm": True}})
        losses.append(BarlowTwins(ResNetEncoder(), cfg, 100)(views)[0])
    torch.testing.assert_close(losses[1], 0.1 * losses[0])
