"""What the tests inject into a training run: the clock, and faults at chosen steps. Handed to the loop as
one object (``TrainingHooks``); the defaults read ``time.perf_counter`` and inject nothing.

A ``crlf pretrain`` process (the fault tests fork or spawn one) takes its faults from environment variables,
all unset in normal use (:meth:`TrainingHooks.from_env`):

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
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

ENV_PREFIX = "CRLF_FAULT_"


@dataclass(frozen=True)
class TrainingHooks:
    """The loop's clock (step times, the budget's accounting) and the faults to inject (None: none)."""

    clock: Callable[[], float] = time.perf_counter
    kill_at_step: int | None = None
    kill_after_epoch: int | None = None
    nan_at_step: int | None = None
    kill_in_checkpoint_write: int | None = None
    kill_in_checkpoint_rotate: int | None = None
    signal_at_step: tuple[int, signal.Signals] | None = None
    oom_at_step: int | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, clock: Callable[[], float] = time.perf_counter
                 ) -> TrainingHooks:
        """The faults that ``CRLF_FAULT_*`` variables ask for (see the module docstring), in this rank."""
        env = os.environ if environ is None else environ
        rank = env.get(ENV_PREFIX + "RANK")
        if rank and rank != env.get("RANK", "0"):  # aimed at another rank: this one runs undisturbed
            return cls(clock=clock)

        def step(name: str) -> int | None:
            value = env.get(ENV_PREFIX + name)
            return int(value) if value not in (None, "") else None

        signal_step, _, signal_name = (env.get(ENV_PREFIX + "SIGNAL_AT_STEP") or "").partition(":")
        return cls(clock=clock, kill_at_step=step("KILL_AT_STEP"), kill_after_epoch=step("KILL_AFTER_EPOCH"),
                   nan_at_step=step("NAN_AT_STEP"), kill_in_checkpoint_write=step("KILL_IN_CHECKPOINT_WRITE"),
                   kill_in_checkpoint_rotate=step("KILL_IN_CHECKPOINT_ROTATE"), oom_at_step=step("OOM_AT_STEP"),
                   signal_at_step=(int(signal_step), getattr(signal, signal_name or "SIGINT")) if signal_step
                   else None)

    # -- called by the loop (crlf.training.loop) and the checkpoint writer (crlf.training.checkpoint) -------
    def after_step(self, global_step: int) -> None:
        if self.kill_at_step == global_step:
            _kill()

    def after_epoch_checkpoint(self, epoch: int) -> None:
        if self.kill_after_epoch == epoch:
            _kill()

    def before_forward(self, global_step: int, device) -> None:
        if self.oom_at_step == global_step:
            import torch

            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate 2.00 GiB (injected by CRLF_FAULT_OOM_AT_STEP on {device})"
            )

    def loss(self, value: float, global_step: int) -> float:
        """The loss the loop checks: NaN at ``nan_at_step``."""
        return float("nan") if self.nan_at_step == global_step else value

    def mid_step(self, global_step: int) -> None:
        """After the forward pass, before the update: a signal arriving mid-step."""
        if self.signal_at_step is not None and self.signal_at_step[0] == global_step:
            os.kill(os.getpid(), self.signal_at_step[1])

    def in_checkpoint_write(self, handle, data: bytes, global_step: int) -> None:
        """Write the first half of ``data`` to the open temp file, make it durable, then SIGKILL."""
        if self.kill_in_checkpoint_write == global_step:
            handle.write(data[: len(data) // 2])
            handle.flush()
            os.fsync(handle.fileno())
            _kill()

    def in_checkpoint_rotate(self, global_step: int) -> None:
        if self.kill_in_checkpoint_rotate == global_step:
            _kill()


NO_HOOKS = TrainingHooks()


def _kill() -> None:
    os.kill(os.getpid(), signal.SIGKILL)
