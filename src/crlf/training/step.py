"""One pretraining step, the same for every method: used by the loop (``crlf.training.loop``) and by every
benchmark that times a step (``bench/throughput.py``, ``bench/step_profile.py``, ``bench/methods.py``)."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

from crlf.config import Config
from crlf.methods import method_class
from crlf.methods.base import Method, StepClock
from crlf.models.backbones import build_backbone
from crlf.training.distributed import mean_over_ranks
from crlf.training.optim import build_optimizer


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


def build_training_modules(cfg: Config, device: torch.device | str = "cpu", num_images: int | None = None
                           ) -> tuple[Method, torch.optim.Optimizer]:
    """The method (backbone included) on ``device``, backbone in the configured memory layout, and its
    optimiser: the training step's modules, shared by the loop and the benchmarks that time it.
    ``num_images`` (the training set's size) lets queues fit themselves to small data."""
    backbone = build_backbone(cfg.model, cfg.data.image_size)  # ResNet, ViT or timm model
    method = method_class(cfg.method.name)(backbone, cfg, num_images or 10**9)
    method.to(device)
    if cfg.train.channels_last:  # every convolution's weights, momentum targets included; heads are 2-d
        method.to(memory_format=torch.channels_last)
    groups = method.param_groups(cfg.optim.weight_decay, cfg.optim.exclude_bias_and_norm)
    return method, build_optimizer(cfg, groups)
