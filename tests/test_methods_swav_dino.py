"""SwAV (``crlf.methods.swav``) and DINO (``crlf.methods.dino``): Sinkhorn-Knopp, both losses against slow
references written from the papers' equations, their properties, and the methods' hooks (prototype
normalisation and freezing, the queue, the centre, the teacher temperature schedule, the teacher's EMA)."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from crlf.config import load_config
from crlf.methods import method_class
from crlf.methods.base import StepClock, cross_view_pairs
from crlf.methods.dino import DINOLoss
from crlf.methods.swav import SwAVLoss, sinkhorn
from crlf.models.encoder import ResNetEncoder

SETTINGS = settings(max_examples=40, deadline=None)
B = 4  # batch of the method tests


# -- slow references, straight from the papers ---------------------------------------------------------------
def slow_sinkhorn(scores: torch.Tensor, epsilon: float, iterations: int) -> torch.Tensor:
    """SwAV's Algorithm 1 in float64 with explicit loops: Q = exp(scores / eps)^T (K x N), normalised to sum 1,
    then ``iterations`` x (each prototype row to 1/K, each sample column to 1/N), then columns times N."""
    s = scores.double().tolist()
    n, k = len(s), len(s[0])
    q = [[math.exp(s[b][p] / epsilon) for b in range(n)] for p in range(k)]  # (K, N)
    total = sum(sum(row) for row in q)
    q = [[v / total for v in row] for row in q]
    for _ in range(iterations):
        for p in range(k):
            row_sum = sum(q[p])
            q[p] = [v / row_sum / k for v in q[p]]
        for b in range(n):
            col_sum = sum(q[p][b] for p in range(k))
            for p in range(k):
                q[p][b] = q[p][b] / col_sum / n
    return torch.tensor([[q[p][b] * n for p in range(k)] for b in range(n)], dtype=torch.float64)  # (N, K)


def _log_softmax(row: list[float]) -> list[float]:
    top = max(row)
    lse = top + math.log(sum(math.exp(v - top) for v in row))
    return [v - lse for v in row]


def slow_swav_loss(scores, codes, temperature: float) -> float:
    """Eq. (1)-(2) of SwAV: l(z_i, q_j) = -sum_k q_j^(k) log p_i^(k), p_i = softmax(z_i^T c / T), averaged over
    the batch and over every (predicting view i, global view j != i) pair."""
    total, pairs = 0.0, 0
    for j in range(len(codes)):
        for i in range(len(scores)):
            if i == j:
                continue
            term = 0.0
            for s_row, q_row in zip(scores[i].double().tolist(), codes[j].double().tolist()):
                log_p = _log_softmax([v / temperature for v in s_row])
                term -= sum(q * lp for q, lp in zip(q_row, log_p))
            total += term / len(scores[i])
            pairs += 1
    return total / pairs


def slow_dino_loss(student, teacher, center, student_t: float, teacher_t: float) -> float:
    """Eq. (1) of DINO with Algorithm 1's centring: H(P_t, P_s) = -sum P_t log P_s, P_t = softmax((g_t - C) / tau_t),
    P_s = softmax(g_s / tau_s), averaged over the batch and over (student view, other teacher view) pairs."""
    c = center.double().tolist()
    total, pairs = 0.0, 0
    for j in range(len(teacher)):
        for i in range(len(student)):
            if i == j:
                continue
            term = 0.0
            for s_row, t_row in zip(student[i].double().tolist(), teacher[j].double().tolist()):
                log_p = _log_softmax([v / student_t for v in s_row])
                p_t = [math.exp(v) for v in _log_softmax([(v - ck) / teacher_t for v, ck in zip(t_row, c)])]
                term -= sum(q * lp for q, lp in zip(p_t, log_p))
            total += term / len(student[i])
            pairs += 1
    return total / pairs


def random_cosines(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z, c = F.normalize(torch.randn(n, 8, generator=g), dim=1), F.normalize(torch.randn(k, 8, generator=g), dim=1)
    return z @ c.T  # (N, K) in [-1, 1], like SwAV's scores


def random_codes(n: int, k: int, seed: int) -> torch.Tensor:
    return torch.rand(n, k, generator=torch.Generator().manual_seed(seed)).softmax(dim=1)  # rows sum to 1


# -- Sinkhorn -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [2, 3, 8, 17])
@pytest.mark.parametrize("k", [2, 5, 30])
@pytest.mark.parametrize("epsilon", [0.05, 0.3])
@pytest.mark.parametrize("iterations", [1, 3, 10])
def test_sinkhorn_matches_slow_reference(n, k, epsilon, iterations):
    scores = random_cosines(n, k, seed=n * 1000 + k)
    fast = sinkhorn(scores, epsilon, iterations)
    assert fast.dtype == torch.float32 and fast.shape == (n, k)
    torch.testing.assert_close(fast.double(), slow_sinkhorn(scores, epsilon, iterations), rtol=1e-4, atol=1e-6)


def test_sinkhorn_rows_are_codes_and_columns_equipartitioned():
    n, k = 64, 8
    q = sinkhorn(random_cosines(n, k, seed=1), epsilon=0.05, iterations=100)
    torch.testing.assert_close(q.sum(1), torch.ones(n), rtol=0, atol=1e-5)  # each sample: a distribution
    torch.testing.assert_close(q.sum(0), torch.full((k,), n / k), rtol=1e-4, atol=0)  # each prototype: N/K
    # With the paper's 3 iterations the columns are already near N/K, and much nearer than the raw softmax.
    q3, raw = sinkhorn(random_cosines(n, k, seed=1), 0.05, 3), (random_cosines(n, k, seed=1) / 0.05).softmax(1)
    assert (q3.sum(0) - n / k).abs().max() < (raw.sum(0) - n / k).abs().max()


def test_sinkhorn_is_finite_for_a_tiny_epsilon_and_carries_no_gradient():
    scores = random_cosines(16, 10, seed=2).requires_grad_(True)
    q = sinkhorn(scores, epsilon=1e-3, iterations=5)  # exp(1000) overflows without the log domain
    assert torch.isfinite(q).all() and not q.requires_grad
    torch.testing.assert_close(q.sum(1), torch.ones(16), rtol=0, atol=1e-5)


@SETTINGS
@given(n=st.integers(2, 20), k=st.integers(2, 12), seed=st.integers(0, 2**16), data=st.data(),
       epsilon=st.sampled_from([0.03, 0.05, 0.1, 0.5]), iterations=st.integers(1, 6))
def test_sinkhorn_rows_sum_to_one_and_codes_follow_their_samples(n, k, seed, data, epsilon, iterations):
    """Any scores: rows are distributions; permuting the batch permutes the codes (a sample's code does not
    depend on where it sits in the batch)."""
    scores = random_cosines(n, k, seed) * data.draw(st.sampled_from([0.1, 1.0, 3.0]))
    q = sinkhorn(scores, epsilon, iterations)
    assert torch.isfinite(q).all() and (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(n), rtol=0, atol=1e-5)
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    torch.testing.assert_close(sinkhorn(scores[perm], epsilon, iterations), q[perm], rtol=1e-4, atol=1e-6)


# -- SwAV loss ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [2, 3, 8])
@pytest.mark.parametrize("k", [2, 7, 64])
@pytest.mark.parametrize("temperature", [0.1, 0.5])
@pytest.mark.parametrize("views,num_global", [(2, 2), (5, 2), (3, 1)])
def test_swav_loss_matches_slow_reference(batch, k, temperature, views, num_global):
    seed = batch * 100 + k
    scores = [random_cosines(batch, k, seed + v) for v in range(views)]
    codes = [sinkhorn(scores[j], 0.05, 3) for j in range(num_global)]
    fast = SwAVLoss(temperature)(scores, codes)
    assert fast.dtype == torch.float32 and fast.dim() == 0
    assert fast.item() == pytest.approx(slow_swav_loss(scores, codes, temperature), rel=1e-5, abs=1e-5)


def test_swav_loss_of_uniform_codes_and_scores_is_log_k():
    k = 11
    scores = [torch.full((3, k), 0.3) for _ in range(4)]
    codes = [torch.full((3, k), 1 / k) for _ in range(2)]
    assert SwAVLoss(0.1)(scores, codes).item() == pytest.approx(math.log(k), rel=1e-6)


@SETTINGS
@given(n=st.integers(2, 10), k=st.integers(2, 16), views=st.integers(2, 5), seed=st.integers(0, 2**16),
       t=st.sampled_from([0.05, 0.1, 0.5]), data=st.data())
def test_swav_loss_is_invariant_to_permuting_the_batch_jointly(n, k, views, seed, t, data):
    scores = [random_cosines(n, k, seed + v) for v in range(views)]
    codes = [random_codes(n, k, seed + v) for v in range(2)]
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    loss = SwAVLoss(t)
    torch.testing.assert_close(loss(scores, codes), loss([s[perm] for s in scores], [c[perm] for c in codes]))
    shift = data.draw(st.floats(-5, 5, allow_subnormal=False))  # a constant added to a row of scores: softmax does not see it
    assert loss([s + shift for s in scores], codes).item() == pytest.approx(loss(scores, codes).item(), abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_swav_loss_is_fp32_with_finite_gradients_under_autocast(dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 20)
    with torch.autocast("cpu", dtype=dtype):
        scores = layer(torch.randn(12, 8))  # (3B, K) in half precision
        value = SwAVLoss(0.1)(list(scores.split(4)), [random_codes(4, 20, 0), random_codes(4, 20, 1)])
    assert scores.dtype == dtype and value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(p.grad).all() for p in layer.parameters())


def test_swav_loss_checks_its_arguments():
    with pytest.raises(ValueError, match="temperature must be > 0"):
        SwAVLoss(0.0)
    with pytest.raises(ValueError, match="one shape"):
        SwAVLoss(0.1)([torch.zeros(4, 5), torch.zeros(3, 5)], [torch.zeros(4, 5)])
    with pytest.raises(ValueError, match="2 or more views"):
        SwAVLoss(0.1)([torch.zeros(4, 5)], [torch.zeros(4, 5)])


# -- DINO loss ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [2, 3, 8])
@pytest.mark.parametrize("k", [2, 7, 64])
@pytest.mark.parametrize("student_t,teacher_t", [(0.1, 0.04), (0.1, 0.07), (0.5, 1.0)])
@pytest.mark.parametrize("views,num_global", [(2, 2), (5, 2), (3, 1)])
def test_dino_loss_matches_slow_reference(batch, k, student_t, teacher_t, views, num_global):
    g = torch.Generator().manual_seed(batch * 100 + k)
    student = [torch.randn(batch, k, generator=g) for _ in range(views)]
    teacher = [torch.randn(batch, k, generator=g) for _ in range(num_global)]
    center = 0.3 * torch.randn(k, generator=g)
    fast = DINOLoss(student_t)(student, teacher, center, teacher_t)
    assert fast.dtype == torch.float32 and fast.dim() == 0
    reference = slow_dino_loss(student, teacher, center, student_t, teacher_t)
    assert fast.item() == pytest.approx(reference, rel=1e-5, abs=1e-5)


@pytest.mark.parametrize("k", [2, 10, 4096])
def test_dino_loss_of_a_uniform_teacher_equal_to_the_student_is_log_k(k):
    logits = [torch.full((3, k), 0.7) for _ in range(2)]  # teacher == student, every logit equal: uniform
    value = DINOLoss(0.1)(logits, logits, torch.full((k,), 0.2), teacher_temperature=0.04)
    assert value.item() == pytest.approx(math.log(k), rel=1e-6)


@SETTINGS
@given(n=st.integers(2, 10), k=st.integers(2, 16), views=st.integers(2, 5), seed=st.integers(0, 2**16),
       ts=st.sampled_from([0.1, 0.2]), tt=st.sampled_from([0.04, 0.07]), data=st.data())
def test_dino_loss_is_invariant_to_permuting_the_batch_and_shifting_the_centre(n, k, views, seed, ts, tt, data):
    g = torch.Generator().manual_seed(seed)
    student = [torch.randn(n, k, generator=g) for _ in range(views)]
    teacher = [torch.randn(n, k, generator=g) for _ in range(2)]
    center = torch.randn(k, generator=g)
    loss = DINOLoss(ts)
    value = loss(student, teacher, center, tt)
    perm = torch.tensor(data.draw(st.permutations(range(n))))
    torch.testing.assert_close(value, loss([s[perm] for s in student], [t[perm] for t in teacher], center, tt))
    shift = data.draw(st.floats(-5, 5, allow_subnormal=False))  # the same constant off every logit: the teacher's softmax is unchanged
    assert loss(student, teacher, center + shift, tt).item() == pytest.approx(value.item(), rel=1e-4, abs=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_dino_loss_is_fp32_with_finite_gradients_under_autocast_and_none_for_the_teacher(dtype):
    torch.manual_seed(0)
    layer = torch.nn.Linear(8, 32)
    teacher = torch.randn(8, 32, requires_grad=True)
    with torch.autocast("cpu", dtype=dtype):
        student = layer(torch.randn(12, 8))  # (3B, K) in half precision
        value = DINOLoss(0.1)(list(student.split(4)), list(teacher.split(4)), torch.zeros(32), 0.04)
    assert student.dtype == dtype and value.dtype == torch.float32
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(p.grad).all() for p in layer.parameters())
    assert teacher.grad is None


def test_dino_loss_checks_its_arguments():
    with pytest.raises(ValueError, match="student_temperature must be > 0"):
        DINOLoss(-0.1)
    with pytest.raises(ValueError, match="teacher_temperature must be > 0"):
        DINOLoss(0.1)([torch.zeros(2, 3)] * 2, [torch.zeros(2, 3)] * 2, torch.zeros(3), 0.0)
    with pytest.raises(ValueError, match="one shape"):
        DINOLoss(0.1)([torch.zeros(2, 3)] * 2, [torch.zeros(2, 3)] * 2, torch.zeros(4), 0.04)


# -- the methods, on a tiny ResNet-18 -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def backbone():
    torch.manual_seed(0)
    return ResNetEncoder("resnet18")


class TinyBackbone(torch.nn.Module):
    """A stand-in for the ResNet where only the dtype matters: bf16 convolutions' backward is slow on a CPU."""

    feature_dim = 8

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, 2, 1, bias=False), torch.nn.BatchNorm2d(8),
                                       torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())

    def forward(self, x):
        return self.net(x)  # (B, 8)


def build(name: str, backbone: torch.nn.Module, num_images: int = 64, **sections):
    overrides = {"model": {"proj_hidden_dim": 32, "proj_out_dim": 16, "proj_batchnorm": name == "swav"},
                 "train": {"batch_size": B, "epochs": 4}}
    for section, values in sections.items():
        overrides[section] = {**overrides.get(section, {}), **values}
    overrides["method"] = {"name": name, "num_prototypes": 10, **overrides.get("method", {})}
    cfg = load_config(None, overrides)
    torch.manual_seed(1)
    return method_class(name)(copy.deepcopy(backbone), cfg, num_images)


def make_views(seed: int = 0, local: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return ([torch.randn(B, 3, 16, 16, generator=g) for _ in range(2)]
            + [torch.randn(B, 3, 8, 8, generator=g) for _ in range(local)])


def step(method, clock: StepClock, views: list[torch.Tensor]):
    """The loop's step without an optimiser: hooks, forward, backward."""
    method.on_step_start(clock)
    loss, logs = method(views)
    loss.backward()
    method.on_step_end(clock)
    return loss, logs


def test_swav_prototypes_are_unit_after_on_step_start_and_frozen_only_at_first(backbone):
    method = build("swav", backbone, method={"freeze_prototypes_epochs": 1.0})
    with torch.no_grad():
        method.prototypes.weight.mul_(torch.rand(10, 1) * 5 + 0.1)
    method.on_step_start(StepClock(0.5, 4))
    torch.testing.assert_close(method.prototypes.weight.norm(dim=1), torch.ones(10))
    loss, logs = method(make_views())
    loss.backward()
    assert method.prototypes.weight.grad is None  # frozen: not even weight decay touches it
    assert method.projector[0].weight.grad.abs().sum() > 0 and set(logs) >= {"embedding_std"}
    method.zero_grad(set_to_none=True)
    method.on_step_start(StepClock(1.0, 4))
    method(make_views())[0].backward()
    assert method.prototypes.weight.grad is not None and method.prototypes.weight.grad.abs().sum() > 0


def test_swav_queue_is_a_shifted_fifo_of_the_global_projections(backbone):
    method = build("swav", backbone, method={"queue_size": 2 * B})
    assert method.queue.shape == (2, 2 * B, 16) and int(method.queue_filled) == 0
    outputs = []
    method.projector.register_forward_hook(lambda m, i, out: outputs.append(F.normalize(out.detach(), dim=1)))
    for s in range(2):
        step(method, StepClock(s / 8, 4), make_views(seed=s, local=2))
    first, second = (out[:2 * B].view(2, B, 16) for out in outputs)  # global views only, not the local ones
    torch.testing.assert_close(method.queue[:, :B], second)  # newest first ...
    torch.testing.assert_close(method.queue[:, B:], first)  # ... the previous batch one batch further back
    assert int(method.queue_filled) == 2 * B
    state = method.state_dict()
    assert {"queue", "queue_filled"} <= set(state)
    resumed = build("swav", backbone, method={"queue_size": 2 * B})
    resumed.load_state_dict(state)
    torch.testing.assert_close(resumed.queue, method.queue)
    assert int(resumed.queue_filled) == 2 * B


def test_swav_uses_the_queue_from_its_start_epoch_once_full(backbone, monkeypatch):
    import crlf.methods.swav as swav

    method = build("swav", backbone, method={"queue_size": 2 * B, "queue_start_epoch": 1.0})
    rows = []
    real = swav.sinkhorn
    monkeypatch.setattr(swav, "sinkhorn", lambda s, *a: rows.append(len(s)) or real(s, *a))
    _, logs = step(method, StepClock(1.0, 4), make_views(0))  # past the start epoch, but the queue is empty
    assert rows == [B, B] and logs["queue_in_use"] == 0
    step(method, StepClock(0.5, 4), make_views(1))  # now full, before the start epoch: not used
    assert rows[2:] == [B, B]
    loss, logs = step(method, StepClock(1.0, 4), make_views(2))
    assert rows[4:] == [3 * B, 3 * B] and logs["queue_in_use"] == 1 and torch.isfinite(loss)


def test_swav_fits_its_queue_to_a_small_training_set(backbone):
    with pytest.warns(UserWarning, match="queue_size"):
        method = build("swav", backbone, num_images=3 * B, method={"queue_size": 100})
    assert method.queue.shape[1] == 2 * B


def test_dino_centre_is_an_ema_of_the_mean_teacher_output(backbone):
    method = build("dino", backbone, method={"center_momentum": 0.8})
    c0 = torch.randn(10)
    method.center.copy_(c0)
    teacher_logits = []
    method.target_projector.register_forward_hook(lambda m, i, out: teacher_logits.append(out[1].detach()))
    step(method, StepClock(0.0, 4), make_views(local=2))
    (logits,) = teacher_logits
    assert logits.shape == (2 * B, 10)  # the teacher sees the global views only
    torch.testing.assert_close(method.center, 0.8 * c0 + 0.2 * logits.mean(0))


def test_dino_teacher_temperature_warms_up_linearly_then_stays(backbone):
    method = build("dino", backbone, train={"epochs": 20},
                   method={"warmup_teacher_temperature": 0.04, "teacher_temperature": 0.07,
                           "warmup_teacher_epochs": 10})
    for epoch, expected in [(0.0, 0.04), (2.5, 0.0475), (5.0, 0.055), (10.0, 0.07), (15.0, 0.07)]:
        assert method.teacher_temperature_at(epoch) == pytest.approx(expected)
    method.on_step_start(StepClock(5.0, 20))
    _, logs = method(make_views())
    assert logs["teacher_temperature"].item() == pytest.approx(0.055)
    assert logs["momentum"].item() == pytest.approx(0.99 + 0.01 * (1 - math.cos(math.pi * 0.25)) / 2)


def test_dino_warm_up_longer_than_the_run_is_fitted_to_it_with_a_warning(backbone):
    with pytest.warns(UserWarning, match="warmup_teacher_epochs=30 is longer than the run"):
        method = build("dino", backbone, train={"epochs": 10},
                       method={"warmup_teacher_temperature": 0.04, "teacher_temperature": 0.07,
                               "warmup_teacher_epochs": 30})
    assert method.teacher_temperature_at(5.0) == pytest.approx(0.055)
    assert method.teacher_temperature_at(10.0) == pytest.approx(0.07)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build("dino", backbone, train={"epochs": 10}, method={"warmup_teacher_epochs": 10})


def test_dino_teacher_is_left_out_of_training_and_kept_in_the_state(backbone):
    method = build("dino", backbone, method={"momentum": 0.9, "momentum_final": 0.9})
    teacher = {id(p) for p in (*method.target_backbone.parameters(), *method.target_projector.parameters())}
    student = {id(p) for p in (*method.backbone.parameters(), *method.projector.parameters())}
    for exclude in (False, True):
        grouped = {id(p) for group in method.param_groups(1e-6, exclude) for p in group["params"]}
        assert grouped == student and not grouped & teacher
    state = method.state_dict()
    assert "center" in state and any(k.startswith("target_backbone.") for k in state)
    assert any(k.startswith("target_projector.") for k in state)
    # One step: no gradient reaches the teacher, and it moves by EMA towards the (perturbed) student.
    before = [p.clone() for p in method.target_projector.parameters()]
    method.on_step_start(StepClock(0.0, 4))
    method(make_views())[0].backward()
    assert all(p.grad is None for p in method.target_backbone.parameters())
    assert method.backbone.conv1.weight.grad.abs().sum() > 0
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(1.0)
    method.on_step_end(StepClock(0.0, 4))
    for old, new, online in zip(before, method.target_projector.parameters(), method.projector.parameters()):
        torch.testing.assert_close(new, 0.9 * old + 0.1 * online)


def test_dino_last_layer_is_frozen_for_the_first_epochs(backbone):
    method = build("dino", backbone, method={"freeze_prototypes_epochs": 1.0})
    step(method, StepClock(0.5, 4), make_views())
    assert method.projector.last_layer.weight.grad is None and method.projector.mlp[0].weight.grad.abs().sum() > 0
    step(method, StepClock(1.0, 4), make_views())
    assert method.projector.last_layer.weight.grad is not None


@pytest.mark.parametrize("name", ["swav", "dino"])
def test_methods_under_bf16_autocast_with_multi_crop(name):
    method = build(name, TinyBackbone(),
                   augment={"crops": [{"count": 2}, {"size": 8, "count": 2, "scale": [0.05, 0.4]}]})
    assert method.embedding_dim == 16 and method.num_global == 2
    method.on_step_start(StepClock(0.0, 4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, logs = method(make_views(local=2))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert 0 < logs["embedding_std"] <= 1 / math.sqrt(method.embedding_dim) + 1e-6  # the bound of unit rows
    loss.backward()
    grads = [p.grad for p in method.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert len(cross_view_pairs(4, 2)) == 6  # each local view learns from both global ones
