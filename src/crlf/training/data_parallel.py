"""The method under several processes: DistributedDataParallel around it, and BatchNorm whose statistics
cover the global batch (``train.sync_batchnorm``). In a single process :func:`wrap` returns the method itself."""

from __future__ import annotations

import warnings

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from crlf.training.distributed import is_distributed, sum_with_grad, world_size


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics cover every rank's batch (torch's SyncBatchNorm runs on GPUs only;
    this one runs anywhere, with plain ops and two all-reduces that carry gradients).

    Same parameters and buffers as the BatchNorm it replaces (the state dict is unchanged); evaluation and a
    single process use the ordinary BatchNorm path."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of 2 or more dimensions (N, C, ...), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and is_distributed()):
            return super().forward(x)
        self._check_input_dim(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        shape = (1, c) + (1,) * (x.dim() - 2)
        count = x.numel() // c * world_size()  # values per channel in the global batch
        with torch.autocast(x.device.type, enabled=False):  # batch statistics in fp32, as BatchNorm under autocast
            xf = x.float()
            mean = sum_with_grad(xf.sum(dims)) / count  # (C,)
            centred = xf - mean.view(shape)
            var = sum_with_grad(centred.pow(2).sum(dims)) / count  # (C,) biased, as BatchNorm normalises
            y = centred * torch.rsqrt(var + self.eps).view(shape)
            if self.affine:
                y = y * self.weight.view(shape) + self.bias.view(shape)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), factor)
                unbiased = var.detach() * (count / max(count - 1, 1))  # as BatchNorm keeps it
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), factor)
        return y.to(x.dtype)


def convert_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Every BatchNorm in ``module`` computing its statistics over the global batch: torch's SyncBatchNorm on
    CUDA, :class:`GlobalBatchNorm` elsewhere. The parameters are the same objects (an optimiser built on them
    stays valid) and the state-dict keys are unchanged."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats, device=device)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_batchnorm(child, device))
    return module


class DistributedMethod(DistributedDataParallel):
    """DDP around a :class:`~crlf.methods.base.Method` that still answers the loop's per-step hooks."""

    def on_step_start(self, clock) -> None:
        self.module.on_step_start(clock)

    def on_step_end(self, clock) -> None:
        self.module.on_step_end(clock)


def wrap(method: nn.Module, sync_batchnorm: bool | None, device: torch.device) -> nn.Module:
    """The module the step runs: ``method`` itself in one process; with several, DDP around it, after turning
    its BatchNorms into global ones when ``sync_batchnorm`` (None: the method's recipe, ``Method.sync_batchnorm``).

    Buffers are synchronised from rank 0 once, at the start, never per step (``forward_sync_buffers=False``):
    queues and centres are kept identical by the methods themselves (fed from every rank), momentum targets
    are EMA copies updated alike on every rank, and without sync_batchnorm the BatchNorm running statistics
    differ per rank: rank 0's are the ones checkpointed and exported."""
    if not is_distributed():
        return method
    if method.sync_batchnorm if sync_batchnorm is None else sync_batchnorm:
        convert_batchnorm(method, device)
    with warnings.catch_warnings():  # after a freeze ends no parameter is unused: torch says so once
        warnings.filterwarnings("ignore", message=".*find_unused_parameters=True.*")
        return DistributedMethod(method, device_ids=[device.index] if device.type == "cuda" else None,
                                 forward_sync_buffers=False,
                                 find_unused_parameters=method.ddp_find_unused_parameters)
