import pytest
import torch

from crlf.runtime import flush_denormals


def test_flush_denormals_makes_subnormal_arithmetic_zero():
    if not flush_denormals():
        pytest.skip("this CPU cannot flush subnormal floats")
    subnormal = torch.tensor([1e-39, 3e-40], dtype=torch.float32)  # below float32's 1.18e-38
    assert torch.equal(subnormal * 1.0, torch.zeros(2))
    assert (torch.tensor([1e-30]) * 1.0).item() > 0  # normal floats are untouched
