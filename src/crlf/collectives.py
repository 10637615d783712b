"""What crosses processes, for the methods' losses as much as for the loop: who this process is, this rank's
rows of a global batch, gathers (with or without the gradient flowing back) and means over the ranks.

Each is the identity in a single process (no process group), so a run without torchrun executes exactly the
operations it always did. Kept apart from :mod:`crlf.training.distributed` (the process group, signals,
random streams per rank) so that a method's loss depends on these few collectives and not on the loop's
package.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

# -- who am I ----------------------------------------------------------------------------------------------

def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main() -> bool:
    """Rank 0, the one process that writes metrics, checkpoints, exports and plots (True in one process)."""
    return rank() == 0


# -- what crosses processes --------------------------------------------------------------------------------

def shard(x: torch.Tensor) -> torch.Tensor:
    """This rank's rows of a global batch: ``(B, ...) -> (B / W, ...)`` (rank r holds rows r*B/W onwards)."""
    return x.chunk(world_size())[rank()] if is_distributed() else x


@torch.no_grad()
def gather(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Every rank's ``x`` concatenated in rank order along ``dim``, without gradient (keys, scores, codes):
    ``(b, ...) -> (W b, ...)``, the global batch in its single-process order."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=dim)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns, to each rank, the *sum over ranks* of the gradient
    with respect to its rows: every rank's loss depends on every rank's embeddings."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)  # (W b, ...)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)  # all_reduce works in place
        dist.all_reduce(grad)  # (W b, ...) summed over the ranks' losses
        return grad.chunk(dist.get_world_size())[dist.get_rank()]  # (b, ...)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``(b, ...) -> (W b, ...)`` with the gradient flowing back to every rank's rows (NT-Xent negatives,
    batch statistics). With DDP's gradient averaging, a loss computed identically on every rank over the
    gathered batch gets exactly the single-process gradient."""
    return _GatherWithGrad.apply(x) if is_distributed() else x


class _SumWithGrad(torch.autograd.Function):
    """All-reduce (sum) whose backward sums the gradients of every rank's use of the result."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(x)
        return x

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def sum_with_grad(x: torch.Tensor) -> torch.Tensor:
    return _SumWithGrad.apply(x) if is_distributed() else x


@torch.no_grad()
def mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of ``x`` over the ranks, without gradient (logged losses, DINO's teacher mean); ``x`` itself
    in one process. Every rank holds the same number of rows, so a mean of per-rank means is the global one."""
    if not is_distributed():
        return x
    x = x.detach().clone(memory_format=torch.contiguous_format)
    dist.all_reduce(x)
    return x / world_size()
