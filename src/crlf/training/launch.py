"""``crlf pretrain --nproc N``: the same job as ``torchrun --standalone --nproc-per-node N -m crlf pretrain ...``,
started through torch's own elastic launcher (rendezvous, worker monitoring, teardown), not a home-made spawner.

The workers are forked from this process (torch is already imported here, which saves each one ~10 s of
imports on a busy CPU) and each runs ``crlf pretrain`` with the same flags, minus ``--nproc``. When a worker
dies, the elastic agent stops the others; this process then names the rank and prints the resume command.
SIGTERM or SIGINT to this process reaches the workers, which finish their step, checkpoint and stop
(exit 143 / 130).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import uuid
from pathlib import Path

from crlf.errors import Interrupted, TrainingStopped, UsageError
from crlf.training.distributed import LAUNCHER_ENV

CRLF_EXIT_CODES = (1, 2, 130, 143)  # the workers printed their own message (cli.main's exit codes)


def worker_argv(argv: list[str]) -> list[str]:
    """The launcher's own arguments without ``--nproc N``, and ``run`` reduced to its ``pretrain`` part."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return ["pretrain", *out[1:]]


def _worker(main, argv: list[str]) -> None:
    """A worker: ``main(argv)`` (``crlf pretrain ...``) in this (forked) process, with torchrun's environment."""
    code = main(argv)
    if code:
        sys.exit(code)  # the agent reads the exit code


def launch(main, argv: list[str], nproc: int, run_dir: Path) -> None:
    """Run ``main(argv)`` (``crlf.cli.main``; ``argv`` without ``--nproc`` and its ``run`` turned into
    ``pretrain``) in ``nproc`` processes on this machine."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    if os.environ.get("WORLD_SIZE"):
        raise UsageError("--nproc starts its own processes; under torchrun (WORLD_SIZE is set) leave it out.")
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=uuid.uuid4().hex,
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0",  # torchrun --standalone
                          max_restarts=0, monitor_interval=0.1, start_method="fork")
    for name in ("torch.distributed.elastic", "torch.multiprocessing"):  # we name the failed rank ourselves
        logging.getLogger(name).setLevel(logging.CRITICAL)
    os.environ[LAUNCHER_ENV] = str(nproc)
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # as torchrun; the workers set their share of the cores
    resume = f"crlf pretrain --nproc {nproc} --out {run_dir} --resume"
    try:
        elastic_launch(config, _worker)(main, worker_argv(argv))
    except SignalException as exc:  # the agent stopped the workers with the same signal and waited for them
        code = 128 + int(exc.sigval)
        raise Interrupted(f"{signal.Signals(exc.sigval).name}: the {nproc} workers were stopped after their step "
                          f"and a checkpoint. Resume with: {resume}", code) from None
    except ChildFailedError as exc:
        raise _failure(exc, nproc, run_dir, resume) from None
    finally:
        os.environ.pop(LAUNCHER_ENV, None)


def _failure(exc, nproc: int, run_dir: Path, resume: str) -> Exception:
    """The launcher's error for failed workers: a dead rank is named; otherwise the workers said why."""
    failures = exc.failures  # {global rank: ProcessFailure}
    dead = sorted((r, f) for r, f in failures.items() if f.exitcode < 0 or f.exitcode not in CRLF_EXIT_CODES)
    if dead:
        rank, f = dead[0]
        how = (f"was killed by {signal.Signals(-f.exitcode).name}" if f.exitcode < 0
               else f"exited with code {f.exitcode}")
        return TrainingStopped(
            f"rank {rank} of {nproc} (pid {f.pid}) {how}; the other ranks were stopped. Nothing is half-written: "
            f"the last complete checkpoint in '{run_dir}' is kept. Resume with: {resume}")
    codes = sorted({f.exitcode for f in failures.values()})
    code = 143 if 143 in codes else 130 if 130 in codes else codes[-1]
    return _Quiet(code)


class _Quiet(Interrupted):
    """Every worker stopped with a CRLF exit code and printed why: exit with it, adding nothing."""

    def __init__(self, code: int):
        super().__init__("", code)
