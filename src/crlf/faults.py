"""Fault injection for the test suite, driven by environment variables (all unset in normal use).

* ``CRLF_FAULT_KILL_AT_STEP=k``: SIGKILL this process right after global step ``k`` (before any
  checkpoint of that step).
* ``CRLF_FAULT_KILL_AFTER_EPOCH=e``: SIGKILL right after the checkpoint of epoch ``e`` was written.
* ``CRLF_FAULT_NAN_AT_STEP=k``: report a NaN loss at global step ``k`` (0-based).
"""

from __future__ import annotations

import os
import signal


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else None


def maybe_kill(global_step: int) -> None:
    if _env_int("CRLF_FAULT_KILL_AT_STEP") == global_step:
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_kill_after_checkpoint(epoch: int) -> None:
    if _env_int("CRLF_FAULT_KILL_AFTER_EPOCH") == epoch:
        os.kill(os.getpid(), signal.SIGKILL)


def maybe_poison_loss(loss: float, global_step: int) -> float:
    return float("nan") if _env_int("CRLF_FAULT_NAN_AT_STEP") == global_step else loss
