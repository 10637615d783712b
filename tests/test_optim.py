"""``crlf.training.optim``: LARS as ``build_optimizer`` builds it, checked against its definition (You et al., 2017,
https://arxiv.org/abs/1708.03888) stepped by hand; the learning-rate schedule; every optimiser's groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from crlf.config import Config, apply_overrides
from crlf.methods.base import Method
from crlf.training.optim import build_optimizer, learning_rate, set_learning_rate

ETA, WD, MOMENTUM = 0.02, 1e-4 * 50, 0.9  # a larger weight decay than usual, so its part of the update shows


def config(**optim) -> Config:
    return apply_overrides(Config(), {"optim": optim})


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2, bias=False))
    with torch.no_grad():  # BatchNorm starts at weight 1, bias 0: give it something to move
        model[1].weight.uniform_(0.5, 1.5)
        model[1].bias.uniform_(-0.5, 0.5)
    return model


def groups_of(model: nn.Module, exclude: bool = True) -> list[dict]:
    """The groups a Method would give (its ``param_groups`` only uses ``named_parameters``)."""
    return Method.param_groups(model, WD, exclude_bias_and_norm=exclude)


def lars_by_hand(weights: list[torch.Tensor], decayed: list[bool], grads_per_step: list[list[torch.Tensor]],
                 lrs: list[float]) -> list[torch.Tensor]:
    """The definition, in float64: for a decayed ``w`` with gradient ``g``,
    ``trust = eta * ||w|| / (||g|| + wd * ||w||)`` (1 when ||w|| or ||g|| is 0),
    ``update = trust * (g + wd * w)``;
    an excluded parameter's update is ``g`` (no decay, no scaling). Then ``buf = m * buf + update`` (first
    step: ``buf = update``) and ``w -= lr * buf``."""
    w = [x.detach().double().clone() for x in weights]
    buf: list[torch.Tensor | None] = [None] * len(w)
    for grads, lr in zip(grads_per_step, lrs):
        for k, g in enumerate(grads):
            g = g.double()
            if decayed[k]:
                w_norm, g_norm = float(w[k].norm()), float(g.norm())
                trust = ETA * w_norm / (g_norm + WD * w_norm) if w_norm > 0 and g_norm > 0 else 1.0
                update = trust * (g + WD * w[k])
            else:
                update = g
            buf[k] = update.clone() if buf[k] is None else MOMENTUM * buf[k] + update
            w[k] = w[k] - lr * buf[k]
    return w


def run_lars(model: nn.Module, grads_per_step: list[list[torch.Tensor]], lrs: list[float],
             exclude: bool = True) -> list[nn.Parameter]:
    opt = build_optimizer(config(name="lars", lr=lrs[0], momentum=MOMENTUM, weight_decay=WD, lars_eta=ETA,
                                 exclude_bias_and_norm=exclude), groups_of(model, exclude))
    params = list(model.parameters())
    for grads, lr in zip(grads_per_step, lrs):
        set_learning_rate(opt, lr)
        for p, g in zip(params, grads):
            p.grad = g.clone()
        opt.step()
    return params


def random_grads(model: nn.Module, steps: int, seed: int = 1) -> list[list[torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(p.shape, generator=g) for p in model.parameters()] for _ in range(steps)]


@pytest.mark.parametrize("exclude", [True, False], ids=["exclude-bias-and-norm", "decay-everything"])
def test_lars_matches_its_definition_over_two_steps(exclude):
    model = tiny_model()
    start = [p.detach().clone() for p in model.parameters()]
    decayed = [p.ndim > 1 or not exclude for p in model.parameters()]
    assert decayed == ([True, False, False, False, True] if exclude else [True] * 5)
    grads, lrs = random_grads(model, 2), [0.5, 0.25]  # the schedule changes the lr between steps
    expected = lars_by_hand(start, decayed, grads, lrs)
    for p, want in zip(run_lars(model, grads, lrs, exclude), expected):
        torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-6)


def test_lars_trust_ratio_is_one_for_a_zero_weight_or_a_zero_gradient():
    model = tiny_model()
    with torch.no_grad():
        model[3].weight.zero_()  # ||w|| = 0 at the first step
    start = [p.detach().clone() for p in model.parameters()]
    grads, lrs = random_grads(model, 2), [0.5, 0.5]
    grads[0][0] = torch.zeros_like(grads[0][0])  # ||g|| = 0 for the first layer's weight at the first step
    expected = lars_by_hand(start, [True, False, False, False, True], grads, lrs)
    params = run_lars(model, grads, lrs)
    for p, want in zip(params, expected):
        torch.testing.assert_close(p.detach().double(), want, rtol=1e-5, atol=1e-6)
    # By hand, the first step of each: the zero weight moves by lr * g, the zero-gradient one by lr * wd * w.
    first = lars_by_hand(start, [True, False, False, False, True], grads[:1], lrs[:1])
    torch.testing.assert_close(first[4], -0.5 * grads[0][4].double())
    torch.testing.assert_close(first[0], start[0].double() * (1 - 0.5 * WD))


def test_lars_is_built_with_the_configured_trust_coefficient_and_adapts_only_decayed_groups():
    opt = build_optimizer(config(name="lars", lr=0.3, lars_eta=0.005, exclude_bias_and_norm=True),
                          groups_of(tiny_model()))
    assert type(opt).__name__ == "Lars"
    assert [g["trust_coeff"] for g in opt.param_groups] == [0.005, 0.005]
    assert [g["always_adapt"] for g in opt.param_groups] == [True, False]
    assert all("lars_exclude" not in g for g in opt.param_groups)


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "lars"])
def test_every_optimiser_keeps_the_two_groups_and_their_weight_decays(name):
    model = tiny_model()
    groups = groups_of(model)
    opt = build_optimizer(config(name=name, lr=0.1, weight_decay=WD, exclude_bias_and_norm=True), groups)
    assert len(opt.param_groups) == 2
    assert [g["weight_decay"] for g in opt.param_groups] == [WD, 0.0]
    assert [len(g["params"]) for g in opt.param_groups] == [2, 3]
    assert groups[1]["lars_exclude"] is True  # the caller's groups are not modified
    if name != "lars":
        assert all("lars_exclude" not in g and "always_adapt" not in g for g in opt.param_groups)
    model(torch.randn(8, 4)).pow(2).mean().backward()
    opt.step()  # and it steps
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_learning_rate_warms_up_linearly_then_follows_a_cosine():
    cfg = apply_overrides(Config(), {"optim": {"lr": 1.0, "schedule": "cosine", "warmup_epochs": 2},
                                     "train": {"epochs": 10}})
    steps = 5  # per epoch: 10 warm-up steps, then 40 of cosine
    assert [learning_rate(cfg, s, steps) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert learning_rate(cfg, 10, steps) == pytest.approx(1.0)  # the cosine starts at the peak
    assert learning_rate(cfg, 30, steps) == pytest.approx(0.5)  # half-way through the cosine
    assert learning_rate(cfg, 49, steps) == pytest.approx(0.5 * (1 + math.cos(math.pi * 39 / 40)))
    assert learning_rate(cfg, 50, steps) == pytest.approx(0.0, abs=1e-12)


def test_learning_rate_constant_schedule_and_no_warm_up():
    constant = apply_overrides(Config(), {"optim": {"lr": 0.3, "schedule": "constant", "warmup_epochs": 1}})
    assert [learning_rate(constant, s, 4) for s in (0, 3, 4, 39)] == pytest.approx([0.075, 0.3, 0.3, 0.3])
    cosine = apply_overrides(Config(), {"optim": {"lr": 0.3, "schedule": "cosine"}, "train": {"epochs": 2}})
    assert learning_rate(cosine, 0, 4) == pytest.approx(0.3)  # no warm-up: the peak at the first step
    assert learning_rate(cosine, 4, 4) == pytest.approx(0.15)


def test_fixed_lr_groups_keep_their_learning_rate_and_simsiam_marks_its_predictor():
    from crlf.config import Config, apply_overrides
    from crlf.methods.simsiam import SimSiam
    from crlf.models.encoder import ResNetEncoder
    from crlf.training.optim import set_learning_rate

    cfg = apply_overrides(Config(), {"method": {"name": "simsiam"}, "optim": {"name": "sgd", "lr": 0.5},
                                     "model": {"proj_hidden_dim": 16, "proj_out_dim": 8, "pred_hidden_dim": 4}})
    method = SimSiam(ResNetEncoder(), cfg, 100)
    optimizer = build_optimizer(cfg, method.param_groups(1e-5, exclude_bias_and_norm=True))
    predictor = {id(p) for p in method.predictor.parameters()}
    for group in optimizer.param_groups:
        in_predictor = {id(p) in predictor for p in group["params"]}
        assert len(in_predictor) == 1 and group.get("fixed_lr", False) == in_predictor.pop()
    set_learning_rate(optimizer, 0.01)
    assert sorted({g["lr"] for g in optimizer.param_groups}) == [0.01, 0.5]
    assert all(g["lr"] == 0.5 for g in optimizer.param_groups if g.get("fixed_lr"))


def test_precision_auto_is_bf16_only_on_a_cuda_gpu():
    from crlf.training.precision import autocast_dtype

    assert autocast_dtype("auto", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16
