"""Fault injection for the test suite, driven by environment variables (all unset in normal use).

* ``CRLF_FAULT_KILL_AT_STEP=k``: SIGKILL this process right after global step ``k`` (before any
  checkpoint of that step).
* ``CRLF_FAULT_KILL_AFTER_EPOCH=e``: SIGKILL right after the checkpoint of epoch ``e`` was written.
* ``CRLF_FAULT_NAN_AT_STEP=k``: report a NaN loss at global step ``k`` (0-based).
* ``CRLF_FAULT_KILL_IN_CHECKPOINT_WRITE=k``: SIGKILL half-way through writing the temp file of the
  checkpoint taken after global step ``k`` (the temp file is left partly written, as a power cut would).
* ``CRLF_FAULT_KILL_IN_CHECKPOINT_ROTATE=k``: SIGKILL between the two renames of that checkpoint
  (``checkpoint.pt`` already moved to ``checkpoint.prev.pt``, the new file not yet in place).
* ``CRLF_FAULT_SIGNAL_AT_STEP=k`` (``k`` or ``k:SIGTERM``): send this process SIGINT (or SIGTERM) in the
  middle of global step ``k`` (0-based), after the forward pass and before the update.
* ``CRLF_FAULT_OOM_AT_STEP=k``: raise ``torch.OutOfMemoryError`` in the forward pass of global step ``k``
  (0-based), as a GPU that runs out of memory would.
* ``CRLF_FAULT_RANK=r``: with several processes (torchrun), the faults above fire in rank ``r`` only (a rank
  that dies while the others go on); unset, in every process.
"""

from __future__ import annotations

import os
import signal


def _armed() -> bool:
    rank = os.environ.get("CRLF_FAULT_RANK")
    return not rank or rank == os.environ.get("RANK", "0")


def _env_int(name: str) -> int | None:
    value = os.environ.get(name) if _armed() else None
    return int(value) if value not in (None, "") else None


def maybe_kill(global_step: int) -> None:
    if _env_int("CRLF_FAULT_KILL_AT_STEP") == global_step:
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_kill_after_checkpoint(epoch: int) -> None:
    if _env_int("CRLF_FAULT_KILL_AFTER_EPOCH") == epoch:
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_poison_loss(loss: float, global_step: int) -> float:
    return float("nan") if _env_int("CRLF_FAULT_NAN_AT_STEP") == global_step else loss


def _env_step_and_signal(name: str) -> tuple[int | None, signal.Signals]:
    value = (os.environ.get(name) if _armed() else None) or ""
    step, _, sig = value.partition(":")
    return (int(step) if step else None), getattr(signal, sig or "SIGINT")


def maybe_kill_in_checkpoint_write(handle, data, global_step: int) -> None:
    """Write the first half of ``data`` to the open temp file, make it durable, then SIGKILL."""
    if _env_int("CRLF_FAULT_KILL_IN_CHECKPOINT_WRITE") == global_step:
        handle.write(data[: len(data) // 2])
        handle.flush()
        os.fsync(handle.fileno())
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_kill_in_checkpoint_rotate(global_step: int) -> None:
    if _env_int("CRLF_FAULT_KILL_IN_CHECKPOINT_ROTATE") == global_step:
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_signal(global_step: int) -> None:
    step, sig = _env_step_and_signal("CRLF_FAULT_SIGNAL_AT_STEP")
    if step == global_step:
        os.kill(os.getpid(), sig)


def maybe_oom(global_step: int, device) -> None:
    if _env_int("CRLF_FAULT_OOM_AT_STEP") == global_step:
        import torch

        raise torch.OutOfMemoryError(
            f"CUDA out of memory. Tried to allocate 2.00 GiB (injected by CRLF_FAULT_OOM_AT_STEP on {device})"
        )
