"""One pretraining step, the same for every method: used by the loop (``crlf.train``) and by every
benchmark that times a step (``bench/throughput.py``, ``bench/step_profile.py``, ``bench/methods.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from crlf.distributed import mean_over_ranks
from crlf.methods.base import Method, StepClock


def train_step(method: Method, optimizer: torch.optim.Optimizer, views: list[torch.Tensor], clock: StepClock,
               autocast_dtype: torch.dtype | None = None, check_loss: Callable[[float], float] | None = None,
               marks: list[float] | None = None) -> tuple[float, dict[str, float]]:
    """Forward every view, the method's loss, backward, optimiser step, the method's per-step hooks.

    ``views``: ``[(B, 3, S, S)]`` on the device, the global views first. ``check_loss(value)`` runs after
    the forward pass and before any update: it may raise to stop training with the weights untouched (the
    loop's non-finite-loss guard), and returns the loss value to record. ``marks``, if given, receives
    ``time.perf_counter()`` after the forward pass, the backward pass and the optimiser step (profiling).
    Returns the loss and the method's logs as floats; with several processes (``method`` wrapped in DDP), their
    means over the ranks, i.e. the values of the global batch.
    """
    method.on_step_start(clock)
    device_type = views[0].device.type
    with torch.autocast(device_type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        loss, logs = method(views)  # every loss computes in fp32 inside
    loss_value = float(mean_over_ranks(loss.detach()))  # one host sync per step: it is logged anyway
    if marks is not None:
        marks.append(time.perf_counter())
    if check_loss is not None:
        loss_value = check_loss(loss_value)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if marks is not None:
        marks.append(time.perf_counter())
    optimizer.step()
    method.on_step_end(clock)
    if marks is not None:
        marks.append(time.perf_counter())
    values = mean_over_ranks(torch.stack([v.detach().float() for v in logs.values()])).tolist() if logs else []
    return loss_value, dict(zip(logs, values))
