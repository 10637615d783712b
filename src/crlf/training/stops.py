"""The ways a run stops besides finishing: a signal (after a checkpoint) and running out of memory."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path
from typing import Any

import torch

from crlf.errors import Interrupted, TrainingStopped
from crlf.training.progress import Progress


class StopSignals:
    """SIGINT/SIGTERM only set a flag: the loop finishes its step, checkpoints, then stops."""

    def __init__(self):
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum, frame):
        self.received = signum

    def __exit__(self, *exc):
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@contextlib.contextmanager
def stop_on_out_of_memory(state: Progress, batch: int, device: torch.device, run_dir: Path, hint: str):
    """Out of memory in a step: stop with the batch size and a fix. The batch is never shrunk silently."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        raise TrainingStopped(
            f"out of memory on {device} at epoch {state.epoch + 1} step {state.step + 1} with batch size {batch} "
            f"({str(exc).splitlines()[0] if str(exc) else 'no details'}). CRLF never shrinks the batch on its own: "
            f"rerun with a smaller batch, e.g. --batch-size {max(2, batch // 2)} (or --precision bf16 on a GPU), "
            f"in a new --out; or free the device memory and resume with: {hint}. The last checkpoint in "
            f"'{run_dir}' is unchanged."
        ) from None


def raise_interrupted(signum: int, state: Progress, hint: str) -> None:
    name, code = ("SIGINT", 130) if signum == signal.SIGINT else ("SIGTERM", 143)
    raise Interrupted(
        f"{name}: interrupted at epoch {state.epoch + 1} step {state.step}; a checkpoint was written. "
        f"Resume with: {hint}", code)
