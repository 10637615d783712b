"""MoCo v2, MoCo v3, BYOL and SimSiam (``crlf.methods.moco``, ``byol``, ``simsiam``).

Each loss against a slow float64 reference written with explicit loops from the paper's equations, known
values on constructed inputs, hypothesis properties, fp32 under bf16 autocast; then the methods on a tiny
backbone: the MoCo v2 queue (pointer, wrap-around, fitting to small data), the momentum target's EMA, the
optimiser's parameter groups, and the state dict a resumed run needs.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from crlf.config import Config, apply_overrides
from crlf.errors import UsageError
from crlf.methods import method_class
from crlf.methods.base import StepClock, cosine_schedule, fitted_queue_size, forward_backbone
from crlf.methods.byol import BYOLLoss
from crlf.methods.moco import InfoNCEWithQueue, MoCoV3Loss
from crlf.methods.simsiam import NegativeCosine

SETTINGS = settings(max_examples=25, deadline=None)
BATCHES = [2, 3, 8, 17]
DIMS = [1, 4, 32]


# -- slow references, from the papers' equations ---------------------------------------------------------
def _unit(rows: torch.Tensor) -> list[list[float]]:
    out = []
    for row in rows.double().tolist():
        norm = math.sqrt(sum(x * x for x in row))
        out.append([x / max(norm, 1e-12) for x in row])
    return out


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b))


def slow_infonce(q, k, queue, t) -> float:
    """He et al., 2020, eq. 1: -log exp(q.k+/T) / (exp(q.k+/T) + sum_j exp(q.k_j/T)), mean over queries."""
    q, k, queue = _unit(q), _unit(k), _unit(queue)
    total = 0.0
    for qi, ki in zip(q, k):
        positive = math.exp(_dot(qi, ki) / t)
        negatives = sum(math.exp(_dot(qi, n) / t) for n in queue)
        total += -math.log(positive / (positive + negatives))
    return total / len(q)


def slow_mocov3(q, k, t) -> float:
    """Chen, Xie & He, 2021, Algorithm 1: CrossEntropyLoss(q k^T / T, arange(N)) * 2T."""
    q, k = _unit(q), _unit(k)
    total = 0.0
    for i, qi in enumerate(q):
        logits = [_dot(qi, kj) / t for kj in k]
        total += -(logits[i] - math.log(sum(math.exp(x) for x in logits)))
    return total / len(q) * 2 * t


def slow_byol(p, z) -> float:
    """Grill et al., 2020, eq. 2: ||p/|p| - z/|z|||^2, mean over the batch."""
    p, z = _unit(p), _unit(z)
    return sum(sum((a - b) ** 2 for a, b in zip(pi, zi)) for pi, zi in zip(p, z)) / len(p)


def slow_negative_cosine(p, z) -> float:
    """Chen & He, 2021, eq. 1: -p/|p| . z/|z|, mean over the batch."""
    p, z = _unit(p), _unit(z)
    return -sum(_dot(pi, zi) for pi, zi in zip(p, z)) / len(p)


def _randn(seed: int, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- losses against the references ----------------------------------------------------------------------
@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("k", [1, 32])
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_infonce_with_queue_matches_reference(n, d, k, t):
    q, key, queue = _randn(n, n, d), _randn(d, n, d), _randn(k, k, d)
    fast = InfoNCEWithQueue(t)(q, key, queue)
    assert fast.dtype == torch.float32
    assert float(fast) == pytest.approx(slow_infonce(q, key, queue, t), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("t", [0.07, 0.2, 1.0])
def test_mocov3_loss_matches_reference(n, d, t):
    q, k = _randn(n, n, d), _randn(d + 100, n, d)
    fast = MoCoV3Loss(t)(q, k)
    assert fast.dtype == torch.float32
    assert float(fast) == pytest.approx(slow_mocov3(q, k, t), rel=1e-4, abs=1e-5)


@pytest.mark.parametrize("n", BATCHES)
@pytest.mark.parametrize("d", DIMS)
@pytest.mark.parametrize("scale", [1e-2, 1e3])
@pytest.mark.parametrize("loss, slow", [(BYOLLoss(), slow_byol), (NegativeCosine(), slow_negative_cosine)])
def test_regression_losses_match_reference(n, d, scale, loss, slow):
    p, z = _randn(n, n, d) * scale, _randn(d + 100, n, d)
    fast = loss(p, z)
    assert fast.dtype == torch.float32
    assert float(fast) == pytest.approx(slow(p, z), rel=1e-5, abs=1e-5)


# -- known values ---------------------------------------------------------------------------------------
def test_byol_loss_is_0_for_equal_and_4_for_opposite_directions():
    p = _randn(0, 5, 8)
    assert float(BYOLLoss()(p, 3 * p)) == pytest.approx(0.0, abs=1e-6)
    assert float(BYOLLoss()(p, -p)) == pytest.approx(4.0, abs=1e-6)
    assert float(BYOLLoss()(torch.eye(4), torch.eye(4).roll(1, 0))) == pytest.approx(2.0)  # orthogonal


def test_negative_cosine_is_minus_1_for_equal_and_1_for_opposite_directions():
    p = _randn(1, 5, 8)
    assert float(NegativeCosine()(p, 2 * p)) == pytest.approx(-1.0, abs=1e-6)
    assert float(NegativeCosine()(p, -p)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("t", [0.1, 0.5])
def test_known_contrastive_values_on_orthonormal_rows(t):
    """q = k = rows of the identity: the positive scores 1/T, every negative 0."""
    n, k = 4, 6
    eye = torch.eye(n + k)
    q, queue = eye[:n], eye[n:]
    assert float(InfoNCEWithQueue(t)(q, q, queue)) == pytest.approx(math.log(1 + k * math.exp(-1 / t)), abs=1e-6)
    expected = 2 * t * math.log(1 + (n - 1) * math.exp(-1 / t))
    assert float(MoCoV3Loss(t)(q, q)) == pytest.approx(expected, abs=1e-6)


# -- properties -----------------------------------------------------------------------------------------
@st.composite
def batches(draw, count: int, max_n: int = 10, max_d: int = 12):
    """``count`` (N, D) float32 tensors of one shape, moderate values (zeros and repeats included)."""
    n, d = draw(st.integers(2, max_n)), draw(st.integers(1, max_d))
    values = st.floats(-10, 10, width=32, allow_subnormal=False)
    return [torch.from_numpy(draw(arrays(np.float32, (n, d), elements=values))) for _ in range(count)]


def close(a, b) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-4)


@SETTINGS
@given(pair=batches(2), data=st.data(), t=st.sampled_from([0.1, 0.2, 1.0]))
def test_joint_batch_permutation_changes_nothing(pair, data, t):
    p, z = pair
    perm = torch.tensor(data.draw(st.permutations(range(len(p)))))
    for loss in (BYOLLoss(), NegativeCosine(), MoCoV3Loss(t)):
        assert close(loss(p, z), loss(p[perm], z[perm]))


@SETTINGS
@given(qk=batches(2), queue_len=st.integers(1, 16), data=st.data(), t=st.sampled_from([0.1, 0.2, 1.0]))
def test_infonce_ignores_the_order_of_the_queue_and_of_the_batch(qk, queue_len, data, t):
    q, k = qk
    negatives = _randn(queue_len, queue_len, q.shape[1])  # (K, D)
    rows = torch.tensor(data.draw(st.permutations(range(len(negatives)))))
    perm = torch.tensor(data.draw(st.permutations(range(len(q)))))
    loss = InfoNCEWithQueue(t)
    assert close(loss(q, k, negatives), loss(q, k, negatives[rows]))
    assert close(loss(q, k, negatives), loss(q[perm], k[perm], negatives))


@SETTINGS
@given(pair=batches(2))
def test_regression_losses_are_bounded_and_finite(pair):
    p, z = pair
    byol, neg = float(BYOLLoss()(p, z)), float(NegativeCosine()(p, z))
    assert -1e-5 <= byol <= 4 + 1e-5 and -1 - 1e-6 <= neg <= 1 + 1e-6
    # SimSiam's D and BYOL's loss are the same cosine: 2 - 2 cos = 2 + 2 D.
    assert byol == pytest.approx(2 + 2 * neg, abs=1e-5)


@pytest.mark.parametrize("name", ["infonce", "mocov3", "byol", "negcos"])
def test_fp32_under_bf16_autocast_with_finite_gradient(name):
    torch.manual_seed(0)
    layer = nn.Linear(8, 16)
    x = torch.randn(12, 8) * 50
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = layer(x)  # (12, 16) bf16, as a head under autocast returns it
        a, b = z[:6], z[6:]
        value = {"infonce": lambda: InfoNCEWithQueue(0.07)(a, b, z.detach()),
                 "mocov3": lambda: MoCoV3Loss(0.07)(a, b), "byol": lambda: BYOLLoss()(a, b),
                 "negcos": lambda: NegativeCosine()(a, b)}[name]()
    assert z.dtype == torch.bfloat16 and value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_byol_and_simsiam_losses_stop_the_gradient_of_the_target():
    p, z = torch.randn(4, 8, requires_grad=True), torch.randn(4, 8, requires_grad=True)
    (BYOLLoss()(p, z) + NegativeCosine()(p, z)).backward()
    assert p.grad is not None and p.grad.abs().sum() > 0 and z.grad is None


@pytest.mark.parametrize("make", [lambda t: InfoNCEWithQueue(t), lambda t: MoCoV3Loss(t)])
@pytest.mark.parametrize("t", [0.0, -0.2])
def test_non_positive_temperature_is_rejected(make, t):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        make(t)


def test_shape_mismatches_are_rejected():
    a, b = torch.randn(4, 8), torch.randn(5, 8)
    for call in (lambda: BYOLLoss()(a, b), lambda: NegativeCosine()(a, b), lambda: MoCoV3Loss()(a, b),
                 lambda: InfoNCEWithQueue()(a, a, torch.randn(3, 7))):
        with pytest.raises(ValueError, match=r"\(N, D\)"):
            call()


# -- the methods, on a tiny backbone --------------------------------------------------------------------
class TinyBackbone(nn.Module):
    """Conv -> BN -> ReLU -> global pool: ``(B, 3, S, S) -> (B, 8)``, a stand-in for ResNetEncoder."""

    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2), nn.BatchNorm2d(8), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.net(x)


B = 4


def build(name: str, num_images: int = 10**6, crops=None, batch: int = B, **method):
    overrides = {"model": {"proj_hidden_dim": 16, "proj_out_dim": 6, "pred_hidden_dim": 12},
                 "method": {"name": name, **({"momentum": 0.9, "momentum_final": 0.99} if name != "simsiam" else {}),
                            **method},
                 "train": {"batch_size": batch}}
    if name == "mocov2":
        overrides["method"].setdefault("queue_size", 3 * B)
    if crops:
        overrides["augment"] = {"crops": crops}
    torch.manual_seed(0)
    cfg = apply_overrides(Config(), overrides)
    return method_class(name)(TinyBackbone(), cfg, num_images), cfg


def views(n: int = 2, size: int = 12, seed: int = 0) -> list[torch.Tensor]:
    return [_randn(seed + i, B, 3, size, size) for i in range(n)]


MOMENTUM = ["mocov2", "mocov3", "byol"]
ALL = MOMENTUM + ["simsiam"]


@pytest.mark.parametrize("name", ALL)
def test_forward_gives_a_scalar_fp32_loss_and_logs(name):
    method, cfg = build(name)
    loss, logs = method(views())
    loss.backward()
    assert loss.shape == () and loss.dtype == torch.float32 and torch.isfinite(loss)
    assert method.embedding_dim == cfg.model.proj_out_dim
    # Unit rows spread over D dimensions have a mean per-dimension std of at most 1/sqrt(D) (the variances sum
    # to at most 1): a larger value means the spread was not measured on L2-normalised embeddings.
    assert 0 < float(logs["embedding_std"]) <= 1 / math.sqrt(method.embedding_dim) + 1e-6
    assert ("momentum" in logs) == (name in MOMENTUM)
    assert all(v.dim() == 0 and not v.requires_grad for v in logs.values())
    assert all(p.grad is not None for n, p in method.named_parameters() if p.requires_grad)
    assert all(p.grad is None for n, p in method.named_parameters() if n.startswith("target_"))


@pytest.mark.parametrize("name", ALL)
def test_multi_crop_and_bf16_autocast(name):
    crops = [{"count": 2}, {"size": 8, "count": 2, "scale": [0.1, 0.4]}]
    method, _ = build(name, crops=crops)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = method(views(2, 12) + views(2, 8, seed=10))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in method.parameters() if p.requires_grad)


@pytest.mark.parametrize("name", MOMENTUM)
def test_target_starts_as_a_copy_and_moves_by_ema_with_the_cosine_momentum(name):
    method, cfg = build(name)
    online = dict(method.backbone.named_parameters()) | {
        f"p.{k}": v for k, v in method.projector.named_parameters()}
    target = dict(method.target_backbone.named_parameters()) | {
        f"p.{k}": v for k, v in method.target_projector.named_parameters()}
    assert all(torch.equal(online[k], target[k]) and online[k] is not target[k] for k in online)
    optimizer = torch.optim.SGD(method.param_groups(0.0)[0]["params"], lr=0.5)
    clock = StepClock(epoch=3.0, total_epochs=10)
    method.on_step_start(clock)
    loss, logs = method(views())
    m = cosine_schedule(0.9, 0.99, 0.3)
    assert float(logs["momentum"]) == pytest.approx(m)
    loss.backward()
    optimizer.step()
    old = {k: v.detach().clone() for k, v in target.items()}
    assert any(not torch.equal(online[k], old[k]) for k in online)  # the step moved the online network
    method.on_step_end(clock)
    for k in online:
        torch.testing.assert_close(target[k], m * old[k] + (1 - m) * online[k].detach())


@pytest.mark.parametrize("name", MOMENTUM)
@pytest.mark.parametrize("exclude", [False, True])
def test_param_groups_leave_the_target_out(name, exclude):
    method, _ = build(name)
    grouped = [p for g in method.param_groups(1e-4, exclude) for p in g["params"]]
    target = {id(p) for n, p in method.named_parameters() if n.startswith("target_")}
    assert target and not target & {id(p) for p in grouped}
    assert {id(p) for p in grouped} == {id(p) for n, p in method.named_parameters() if not n.startswith("target_")}


def test_simsiam_has_no_target_and_trains_every_parameter():
    method, _ = build("simsiam")
    assert all(p.requires_grad for p in method.parameters())
    assert not any(n.startswith("target_") for n, _ in method.named_parameters())


def test_mocov2_enqueues_the_view0_keys_at_the_pointer_and_wraps():
    method, _ = build("mocov2")
    queue_len = len(method.queue)
    assert queue_len == 3 * B and int(method.queue_ptr) == 0
    clock = StepClock(0.0, 1)
    for step in range(4):  # 4 steps of B keys in a queue of 3B: the 4th wraps round to row 0
        before, ptr = method.queue.clone(), int(method.queue_ptr)
        vs = views(seed=10 * step)
        method(vs)
        with torch.no_grad():  # the keys of view 0, as the target computed them in the forward pass
            features = forward_backbone(method.target_backbone, vs)
            keys = torch.nn.functional.normalize(method.target_projector(torch.cat(features))[:B], dim=1)
        method.on_step_end(clock)
        rows = torch.arange(ptr, ptr + B) % queue_len
        torch.testing.assert_close(method.queue[rows], keys)
        others = torch.ones(queue_len, dtype=torch.bool)
        others[rows] = False
        assert torch.equal(method.queue[others], before[others])
        assert int(method.queue_ptr) == (ptr + B) % queue_len
    assert int(method.queue_ptr) == B


def test_mocov2_eval_forward_does_not_enqueue():
    method, _ = build("mocov2")
    method.eval()
    before = method.queue.clone()
    method(views())
    method.on_step_end(StepClock(0.0, 1))
    assert torch.equal(method.queue, before) and int(method.queue_ptr) == 0


def test_fitted_queue_size_warns_and_shrinks_for_small_data():
    with pytest.warns(UserWarning, match="queue_size=4096 does not fit mocov2.*holds 448"):
        assert fitted_queue_size(4096, 512, 64, "mocov2") == 448
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert fitted_queue_size(4096, 50_000, 256, "mocov2") == 4096


def test_mocov2_fits_its_queue_to_the_training_set():
    with pytest.warns(UserWarning, match="holds 448"):
        method, _ = build("mocov2", num_images=512, batch=64, queue_size=4096)
    assert method.queue.shape == (448, 6)
    assert torch.allclose(method.queue.norm(dim=1), torch.ones(448))  # random unit keys to start with


@pytest.mark.parametrize("queue_size, num_images, match", [(0, 10**6, "queue_size > 0"),
                                                            (64, 7, "too small")])
def test_mocov2_without_a_usable_queue_is_a_usage_error(queue_size, num_images, match):
    with pytest.raises(UsageError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        build("mocov2", num_images=num_images, queue_size=queue_size)


@pytest.mark.parametrize("name", ALL)
def test_state_dict_holds_everything_to_resume(name):
    method, _ = build(name)
    method.on_step_start(StepClock(0.5, 2))
    method(views())
    method.on_step_end(StepClock(0.5, 2))
    state = method.state_dict()
    if name in MOMENTUM:
        assert any(k.startswith("target_backbone.") for k in state)
        assert any(k.startswith("target_projector.") for k in state)
    if name == "mocov2":
        assert "queue" in state and "queue_ptr" in state and int(state["queue_ptr"]) == B
    fresh, _ = build(name)
    fresh.load_state_dict(state)
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in state.items())
