import math

import pytest
import torch

from crlf.methods.simclr import NTXentLoss


def slow_ntxent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Obviously-correct loop over every anchor, straight from the SimCLR paper's definition."""
    z = torch.cat([z1, z2]).double()
    z = z / z.norm(dim=1, keepdim=True)
    n2 = z.shape[0]
    n = n2 // 2
    total = 0.0
    for i in range(n2):
        positive = (i + n) % n2
        sims = [math.exp(float(z[i] @ z[k]) / temperature) for k in range(n2) if k != i]
        total += -math.log(math.exp(float(z[i] @ z[positive]) / temperature) / sum(sims))
    return torch.tensor(total / n2, dtype=torch.float64)


@pytest.mark.parametrize("batch", [2, 3, 8, 17])
@pytest.mark.parametrize("dim", [1, 4, 64])
@pytest.mark.parametrize("temperature", [0.07, 0.2, 0.5, 1.0])
def test_matches_slow_reference(batch, dim, temperature):
    torch.manual_seed(batch * 100 + dim)
    z1, z2 = torch.randn(batch, dim), torch.randn(batch, dim)
    fast = NTXentLoss(temperature)(z1, z2)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), slow_ntxent(z1, z2, temperature), rtol=1e-4, atol=1e-4)


def test_gradient_flows_to_both_views():
    z1 = torch.randn(4, 8, requires_grad=True)
    z2 = torch.randn(4, 8, requires_grad=True)
    NTXentLoss(0.5)(z1, z2).backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_identical_views_give_lower_loss_than_random():
    torch.manual_seed(0)
    z = torch.randn(16, 32)
    loss = NTXentLoss(0.1)
    assert loss(z, z) < loss(z, torch.randn(16, 32))


@pytest.mark.parametrize("temperature", [0.0, -0.1])
def test_rejects_non_positive_temperature(temperature):
    with pytest.raises(ValueError, match="temperature must be > 0"):
        NTXentLoss(temperature)


def test_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(N, D\)"):
        NTXentLoss(0.5)(torch.randn(4, 8), torch.randn(5, 8))
