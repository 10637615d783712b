"""NNCLR and FastSiam (``crlf.methods.nnclr``, ``fastsiam``).

Each loss against a slow float64 reference written with explicit loops from the paper's equations; then the
methods on a tiny backbone: NNCLR's support set (the nearest neighbour really comes from it, the FIFO pointer,
what is real before it is full, its place in the state dict) and FastSiam's averaged target. The end-to-end
guarantees (every command, exact resume after SIGKILL, 2 processes equal 1) come from tests/test_methods.py and
tests/test_distributed.py, which run every registered method.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crlf.config import Config, apply_overrides
from crlf.errors import UsageError
from crlf.methods import method_class
from crlf.methods.base import StepClock
from crlf.methods.fastsiam import FastSiamLoss
from crlf.methods.nnclr import NNCLRLoss, nearest_neighbours


# -- slow references, from the papers' equations ---------------------------------------------------------
def _unit(rows: torch.Tensor) -> list[list[float]]:
    out = []
    for row in rows.double().tolist():
        norm = math.sqrt(sum(x * x for x in row))
        out.append([x / max(norm, 1e-12) for x in row])
    return out


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def slow_nearest(z, support) -> list[list[float]]:
    """NN(z_i, Q) = argmax_{q in Q} cos(z_i, q), the unit row of Q."""
    support = _unit(support)
    return [max(support, key=lambda q: _dot(zi, q)) for zi in _unit(z)]


def slow_nnclr(nn_, p, t) -> float:
    """Dwibedi et al., 2021, eq. 2: -log exp(NN(z_i).p_i/T) / sum_k exp(NN(z_i).p_k/T), mean over i."""
    nn_, p = _unit(torch.tensor(nn_) if not isinstance(nn_, torch.Tensor) else nn_), _unit(p)
    total = 0.0
    for i, ni in enumerate(nn_):
        logits = [_dot(ni, pk) / t for pk in p]
        total += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    return total / len(p)


def slow_fastsiam(p, z) -> float:
    """Pototzky et al., 2022: each view i's prediction against the mean of the other (global) views' projections,
    -cos(p_i, mean_{j != i} z_j), mean over the views and the batch."""
    g, n = len(z), len(z[0])
    total = 0.0
    for i, p_i in enumerate(p):
        others = [j for j in range(g) if j != i]
        for b in range(n):
            target = [sum(float(z[j][b][d]) for j in others) / len(others) for d in range(z[0].shape[1])]
            total += -_dot(_unit(p_i[b:b + 1])[0], _unit(torch.tensor([target]))[0])
    return total / (len(p) * n)


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- losses against the references ----------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 5, 16])
@pytest.mark.parametrize("d", [1, 8, 32])
@pytest.mark.parametrize("t", [0.1, 0.2, 1.0])
def test_nnclr_loss_matches_reference(n, d, t):
    nn_, p = _randn(n, n, d), _randn(d + 7, n, d)
    fast = NNCLRLoss(t)(nn_, p)
    assert fast.dtype == torch.float32
    assert float(fast) == pytest.approx(slow_nnclr(nn_, p, t), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("n, k, d", [(1, 1, 3), (5, 9, 8), (16, 40, 32)])
def test_nearest_neighbours_match_reference(n, k, d):
    z, support = _randn(n, n, d), _randn(k + 3, k, d) * 5  # unnormalised rows: the cosine decides, not the norm
    assert torch.allclose(nearest_neighbours(z, support).double(), torch.tensor(slow_nearest(z, support), dtype=torch.float64),
                          atol=1e-6)


def test_nnclr_loss_gives_no_gradient_to_the_neighbours_and_rejects_bad_input():
    nn_, p = _randn(0, 4, 6).requires_grad_(), _randn(1, 4, 6).requires_grad_()
    NNCLRLoss(0.1)(nn_, p).backward()
    assert nn_.grad is None and p.grad is not None and p.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="temperature must be > 0"):
        NNCLRLoss(0.0)
    with pytest.raises(ValueError, match=r"two \(N, D\) tensors"):
        NNCLRLoss()(torch.zeros(4, 6), torch.zeros(3, 6))


@pytest.mark.parametrize("n", [2, 7])
@pytest.mark.parametrize("d", [1, 16])
@pytest.mark.parametrize("views, num_global", [(3, 3), (4, 4), (6, 4), (4, 2)])
def test_fastsiam_loss_matches_reference(n, d, views, num_global):
    p = [_randn(10 + v, n, d) for v in range(views)]
    z = [_randn(20 + v, n, d) * 3 for v in range(num_global)]
    fast = FastSiamLoss()(p, z)
    assert fast.dtype == torch.float32
    assert float(fast) == pytest.approx(slow_fastsiam(p, z), rel=1e-5, abs=1e-5)


def test_fastsiam_loss_is_minus_1_when_each_prediction_points_at_its_target_and_stops_the_targets_gradient():
    z = [_randn(v, 5, 8).requires_grad_() for v in range(4)]
    targets = [(sum(z) - z[i]).detach() / 3 for i in range(4)]
    p = [(2.5 * t).requires_grad_() for t in targets]  # the same direction, another length
    loss = FastSiamLoss()(p, z)
    assert float(loss.detach()) == pytest.approx(-1.0, abs=1e-6)
    (loss + sum(t.sum() * 0 for t in z)).backward()
    assert all(t.grad is None or float(t.grad.abs().sum()) == 0 for t in z)


# -- the methods on a tiny backbone ---------------------------------------------------------------------
class TinyBackbone(nn.Module):
    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)  # (B, 8)


B = 4


def build(name: str, num_images: int = 64, crops=None, **method):
    overrides = {"model": {"proj_hidden_dim": 16, "proj_out_dim": 6, "pred_hidden_dim": 12},
                 "method": {"name": name, **method}, "train": {"batch_size": B}}
    if crops:
        overrides["augment"] = {"crops": crops}
    torch.manual_seed(0)
    cfg = apply_overrides(Config(), overrides)
    return method_class(name)(TinyBackbone(), cfg, num_images)


def views(n: int = 2, seed: int = 0) -> list[torch.Tensor]:
    return [_randn(seed + i, B, 3, 12, 12) for i in range(n)]


def test_nnclr_support_set_fills_fifo_from_the_first_view_and_is_in_the_state_dict():
    method = build("nnclr", queue_size=3 * B)  # 64 images: 3 batches fit
    assert {"queue", "queue_ptr", "queue_filled"} <= method.state_dict().keys()
    clock = StepClock(0.0, 1)
    firsts = []
    for step in range(4):
        method.on_step_start(clock)
        method(views(seed=10 * step))
        firsts.append(method._to_enqueue.clone())
        method.on_step_end(clock)
    # 4 batches into 3 rows of batches: the 4th overwrote the 1st, the pointer went round once.
    assert int(method.queue_filled) == 3 * B and int(method.queue_ptr) == B
    assert torch.equal(method.queue[:B], firsts[3]) and torch.equal(method.queue[B:2 * B], firsts[1])
    assert torch.allclose(method.queue.norm(dim=1), torch.ones(3 * B))  # unit rows
    eval_method = build("nnclr", queue_size=3 * B).eval()
    eval_method(views())
    assert eval_method._to_enqueue is None  # evaluation never feeds the support set


def test_nnclr_positive_is_the_nearest_neighbour_in_the_support_set():
    """With a support set of known rows, the loss equals the reference computed from the neighbour that the
    slow reference picks in it (not from the other view's projection)."""
    method = build("nnclr", queue_size=2 * B).eval()  # eval: BatchNorm is then a fixed function of the input
    method.queue.copy_(torch.nn.functional.normalize(_randn(5, 2 * B, 6), dim=1))
    method.queue_filled.fill_(2 * B)
    v = views()
    loss, _ = method(v)
    with torch.no_grad():
        z = [method.projector(method.backbone(x)) for x in v]
        p = [method.predictor(t) for t in z]
    expected = (slow_nnclr(slow_nearest(z[0], method.queue), p[1], 0.1)
                + slow_nnclr(slow_nearest(z[1], method.queue), p[0], 0.1)) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_nnclr_before_the_first_enqueue_each_projection_is_its_own_neighbour():
    method = build("nnclr", queue_size=2 * B).eval()
    v = views()
    loss, _ = method(v)
    with torch.no_grad():
        z = [method.projector(method.backbone(x)) for x in v]
        p = [method.predictor(t) for t in z]
    assert float(loss) == pytest.approx((slow_nnclr(z[0], p[1], 0.1) + slow_nnclr(z[1], p[0], 0.1)) / 2, rel=1e-4)


def test_nnclr_settings_and_a_too_small_training_set_are_usage_errors():
    with pytest.raises(UsageError, match="method.queue_size must be > 0"):
        build("nnclr", queue_size=0)
    with pytest.raises(UsageError, match="too small for an NNCLR support set"):
        build("nnclr", num_images=B + 1)


def test_fastsiam_needs_three_views_and_its_loss_is_the_averaged_target_loss():
    with pytest.raises(UsageError, match=r"augment.crops\[0\].count >= 3"):
        build("fastsiam")
    method = build("fastsiam", crops=[{"count": 4}]).eval()
    v = views(4)
    loss, logs = method(v)
    with torch.no_grad():
        z = [method.projector(method.backbone(x)) for x in v]
        p = [method.predictor(t) for t in z]
    assert float(loss) == pytest.approx(slow_fastsiam(p, z), rel=1e-5, abs=1e-6)
    assert float(logs["embedding_std"]) > 0
    # SimSiam's predictor at a fixed learning rate, inherited.
    assert any(g.get("fixed_lr") for g in method.param_groups(0.0))
