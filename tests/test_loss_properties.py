"""Guarantee 8: properties of NT-Xent (``crlf.methods.simclr.NTXentLoss``) that hold for any input, checked
with hypothesis: symmetric in the two views, invariant to permuting the batch and to rescaling a row,
finite for an all-zero row, bounded by log(2N - 1) + 2/T, and computed in fp32 under bf16/fp16 autocast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from crlf.methods.simclr import NTXentLoss

SETTINGS = settings(max_examples=60, deadline=None)
temperatures = st.sampled_from([0.05, 0.07, 0.1, 0.2, 0.5, 1.0, 2.0])


@st.composite
def view_pairs(draw, min_n: int = 2, max_n: int = 12, max_d: int = 16, nonzero: bool = False):
    """Two ``(N, D)`` float32 tensors of moderate values (exact zeros and repeats included)."""
    n, d = draw(st.integers(min_n, max_n)), draw(st.integers(1, max_d))
    values = st.floats(-10, 10, width=32, allow_subnormal=False)
    z1 = draw(arrays(np.float32, (n, d), elements=values))
    z2 = draw(arrays(np.float32, (n, d), elements=values))
    if nonzero:  # a row of (near) zeros has no direction to rescale
        assume(min(np.linalg.norm(z1, axis=1).min(), np.linalg.norm(z2, axis=1).min()) > 1e-2)
    return torch.from_numpy(z1), torch.from_numpy(z2)


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-5, atol=1e-4)


@SETTINGS
@given(views=view_pairs(), t=temperatures)
def test_swapping_the_views_changes_nothing(views, t):
    z1, z2 = views
    loss = NTXentLoss(t)
    assert close(loss(z1, z2), loss(z2, z1))


@SETTINGS
@given(views=view_pairs(), t=temperatures, data=st.data())
def test_permuting_the_batch_jointly_changes_nothing(views, t, data):
    z1, z2 = views
    perm = torch.tensor(data.draw(st.permutations(range(len(z1)))))
    loss = NTXentLoss(t)
    assert close(loss(z1, z2), loss(z1[perm], z2[perm]))


@SETTINGS
@given(views=view_pairs(nonzero=True), t=temperatures, data=st.data())
def test_rescaling_a_row_changes_nothing(views, t, data):
    z1, z2 = views
    row = data.draw(st.integers(0, len(z1) - 1))
    scale = data.draw(st.floats(1e-3, 1e3))
    side = data.draw(st.sampled_from([0, 1]))
    scaled = [z1.clone(), z2.clone()]
    scaled[side][row] *= scale
    loss = NTXentLoss(t)
    assert close(loss(z1, z2), loss(*scaled))


@SETTINGS
@given(views=view_pairs(), t=temperatures, data=st.data())
def test_an_all_zero_row_gives_a_finite_loss_and_gradient(views, t, data):
    z1, z2 = (v.clone() for v in views)
    z1[data.draw(st.integers(0, len(z1) - 1))] = 0
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    value = NTXentLoss(t)(z1, z2)
    value.backward()
    assert torch.isfinite(value)
    assert torch.isfinite(z1.grad).all() and torch.isfinite(z2.grad).all()


@SETTINGS
@given(views=view_pairs(), t=temperatures)
def test_loss_is_bounded(views, t):
    z1, z2 = views
    n = len(z1)
    value = float(NTXentLoss(t)(z1, z2))
    assert -1e-5 <= value <= math.log(2 * n - 1) + 2 / t + 1e-4


@pytest.mark.parametrize("t", [0.05, 0.5])
def test_the_bound_is_nearly_reached_by_the_worst_case(t):
    """Positives opposite, every negative identical to the anchor: each term is 2/T + log(2N - 1) - eps."""
    n = 4
    z1 = torch.ones(n, 1)
    z2 = -torch.ones(n, 1)
    value = float(NTXentLoss(t)(z1, z2))
    # For an anchor: logits +1/T for its n-1 same-view rows, -1/T for the n other-view rows (positive included).
    exact = -(-1 / t) + math.log((n - 1) * math.exp(1 / t) + n * math.exp(-1 / t))
    assert value == pytest.approx(exact, rel=1e-5)
    assert value <= math.log(2 * n - 1) + 2 / t


@SETTINGS
@given(n=st.integers(2, 16), d=st.integers(2, 32), t=temperatures, seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.bfloat16, torch.float16]), magnitude=st.sampled_from([1e-3, 1.0, 100.0]))
def test_autocast_half_precision_is_stable(n, d, t, seed, dtype, magnitude):
    """Under bf16/fp16 autocast the similarities are still computed in fp32: the loss equals the fp32 loss of
    the same (half-precision) embeddings, and it and its gradient are finite."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layer = torch.nn.Linear(8, d)
        x = torch.randn(2 * n, 8) * magnitude
    loss = NTXentLoss(t)
    with torch.autocast("cpu", dtype=dtype):
        z = layer(x)  # (2N, D) in half precision, as a model under autocast returns it
        value = loss(z[:n], z[n:])
    assert z.dtype == dtype and value.dtype == torch.float32
    reference = loss(z[:n].detach().float(), z[n:].detach().float())
    assert torch.allclose(value, reference, rtol=1e-6, atol=1e-6), (value.item(), reference.item())
    value.backward()
    assert torch.isfinite(value) and all(torch.isfinite(p.grad).all() for p in layer.parameters())
