"""Several processes, one per device (``torchrun``, or ``crlf pretrain --nproc N``): the process group, what
crosses processes, and who writes.

Every helper here is the identity in a single process (no process group), so a run without torchrun executes
exactly the operations it always did, bit for bit. With ``W`` processes:

* the global batch stays ``train.batch_size``: each rank trains on its slice ``B / W`` of the same seeded
  permutation and draws its augmentations from its own stream, seeded from (seed, rank);
* DistributedDataParallel averages the gradients over the ranks. A loss that every rank computes identically
  over embeddings gathered *with their gradient* (:func:`gather_with_grad`, whose backward sums the gradient
  that every rank's loss sends to a rank's rows) therefore gets exactly the single-process gradient, and so
  does a per-sample loss averaged over each rank's own rows. A gather whose backward kept only the local
  slice would give ``1/W`` of the gradient of the other ranks' terms: tests/test_distributed.py shows that
  the equality test catches it;
* rank 0 alone writes files; every rank resumes from the same checkpoint.
"""

from __future__ import annotations

import contextlib
import os
import time
import warnings
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from crlf.collectives import (  # noqa: F401 - the process-level helpers below use them; re-exported
    gather,
    gather_with_grad,
    is_distributed,
    is_main,
    mean_over_ranks,
    rank,
    shard,
    sum_with_grad,
    world_size,
)
from crlf.errors import TrainingStopped, UsageError

TIMEOUT_ENV = "CRLF_DIST_TIMEOUT_S"  # seconds a collective waits for a rank before the job stops
DEFAULT_TIMEOUT_S = 600  # longer than rank 0's longest solo work (a checkpoint, the kNN monitor)
LAUNCHER_ENV = "CRLF_NPROC"  # set by `crlf pretrain --nproc N`: the resume hint names that command




def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name) or default)


def init_from_env() -> bool:
    """Join the process group that torchrun's environment describes (``WORLD_SIZE`` > 1; ``RANK``,
    ``MASTER_ADDR`` ...); False, and nothing done, in a single process.

    NCCL for CUDA tensors and gloo for CPU ones. The timeout (``CRLF_DIST_TIMEOUT_S``, default 600 s) bounds
    how long a rank waits in a collective for a rank that died, when no launcher stops it first. Ranks other
    than 0 do not repeat rank 0's warnings (the same config, data and logs on every rank)."""
    if _env_int("WORLD_SIZE", 1) <= 1:
        return False
    if not dist.is_initialized():
        backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
        timeout = timedelta(seconds=float(os.environ.get(TIMEOUT_ENV) or DEFAULT_TIMEOUT_S))
        dist.init_process_group(backend, timeout=timeout)
    if not is_main():
        warnings.simplefilter("ignore")
    return True


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_device(device: torch.device, threads: int) -> torch.device:
    """This rank's device: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process). On the CPU, unless
    ``train.threads`` says otherwise, the processes of a machine share its cores equally."""
    if not is_distributed():
        return device
    local_rank, local_size = _env_int("LOCAL_RANK", 0), _env_int("LOCAL_WORLD_SIZE", 1)
    if device.type == "cuda":
        if device.index is not None:
            raise UsageError(f"--device {device}: with several processes each one uses its own GPU (cuda:LOCAL_RANK); "
                             f"pass --device cuda or auto.")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type == "cpu" and not threads:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_size))
    return device


def check_batch_size(batch_size: int) -> None:
    w = world_size()
    if batch_size % w:
        raise UsageError(f"train.batch_size={batch_size} is the global batch and must divide evenly over the {w} "
                         f"processes; use a multiple of {w}, e.g. --batch-size {max(w, batch_size // w * w)}.")


def resume_command(run_dir: Path) -> str:
    """The command that resumes this run as it was started (``crlf pretrain``, ``--nproc N`` or torchrun)."""
    if not is_distributed():
        return f"crlf pretrain --out {run_dir} --resume"
    if os.environ.get(LAUNCHER_ENV):
        return f"crlf pretrain --nproc {world_size()} --out {run_dir} --resume"
    per_node = _env_int("LOCAL_WORLD_SIZE", world_size())
    nodes = world_size() // per_node
    launcher = f"torchrun --nproc-per-node {per_node}" + (f" --nnodes {nodes} <your --rdzv-* flags>" if nodes > 1 else "")
    return f"{launcher} -m crlf pretrain --out {run_dir} --resume"




def agreed_signal(signum: int | None) -> int | None:
    """A stop signal seen by any rank, agreed by all (SIGTERM over SIGINT), so that every rank stops after the
    same step and the checkpoint is that step's; the local one in one process."""
    if not is_distributed():
        return signum
    flag = torch.tensor([signum or 0], dtype=torch.int64)  # CPU: gloo carries it on every backend
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag) or None


def any_rank(flag: bool) -> bool:
    """True on every rank if it is true on any (a budget's "the next step would overrun"); the flag in one
    process."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], dtype=torch.int64)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value)


def decided_on_main(fn):
    """``fn()`` on rank 0 only, its (small, picklable) result on every rank: decisions that move files, such as
    which checkpoint to resume from. An error on rank 0 is raised on every rank (a UsageError as one)."""
    if not is_distributed():
        return fn()
    box: list[Any] = [None]
    if is_main():
        try:
            box[0] = ("ok", fn())
        except Exception as exc:  # noqa: BLE001 - sent to the other ranks, then raised here too
            box[0] = ("usage" if isinstance(exc, UsageError) else "error", str(exc))
            dist.broadcast_object_list(box, src=0)
            raise
    dist.broadcast_object_list(box, src=0)
    kind, value = box[0]
    if kind == "usage":
        raise UsageError(value)
    if kind == "error":
        raise RuntimeError(f"rank 0 failed: {value}")
    return value


LOST_PEER_GRACE_S = 2.0  # several of the launchers' 0.1 s monitor intervals


@contextlib.contextmanager
def stop_on_lost_rank(where, resume_hint: str):
    """A collective that fails because another rank died (or hung past the timeout) stops this rank with a
    clear message instead of a traceback. ``where()`` says the epoch and step."""
    try:
        yield
    except (dist.DistError, RuntimeError) as exc:
        if not is_distributed() or not _is_lost_peer(exc):
            raise
        # The launcher (torchrun, or --nproc) reports the first worker exit it sees. Exiting at once would often
        # make that this rank's "lost contact" instead of the dead rank's signal; a short wait lets it name the
        # rank that died (it then stops this one).
        time.sleep(LOST_PEER_GRACE_S)
        raise TrainingStopped(
            f"rank {rank()} of {world_size()} lost contact with another rank at {where()} "
            f"({str(exc).splitlines()[0][:200]}): that rank stopped or died (torchrun's summary names it). "
            f"Nothing was written after the last complete checkpoint. Resume with: {resume_hint}"
        ) from None


def _is_lost_peer(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(s in text for s in ("connection closed", "connection reset", "broken pipe", "timed out", "gloo",
                                   "nccl"))


# -- random streams and the checkpoint ---------------------------------------------------------------------

def _rank_seed(*words: int) -> int:
    return int(np.random.SeedSequence(list(words)).generate_state(1)[0])


def augmentation_generator(permutation_gen: torch.Generator, seed: int) -> torch.Generator:
    """The augmentation stream: in one process the permutation's own generator (as always); with several, one
    per rank, seeded from (seed, rank), while the permutation stream stays common to every rank."""
    if not is_distributed():
        return permutation_gen
    return torch.Generator().manual_seed(_rank_seed(seed, rank()))


def _own_rng(aug_gen: torch.Generator, device: torch.device) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "augment": aug_gen.get_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def rank_rng_record(aug_gen: torch.Generator, device: torch.device) -> dict[str, Any]:
    """For the checkpoint: the world size, and with several ranks every rank's own random state (gathered
    on every rank; rank 0 writes it)."""
    if not is_distributed():
        return {"world_size": 1}
    states: list[Any] = [None] * world_size()
    dist.all_gather_object(states, {k: v.cpu() for k, v in _own_rng(aug_gen, device).items()})
    return {"world_size": world_size(), "rank_rng": states}


def restore_rank_rng(checkpoint: dict[str, Any], aug_gen: torch.Generator, seed: int, device: torch.device) -> None:
    """This rank's random state from a checkpoint of the same world size (an exact resume). With another
    world size the global batch and the data order carry on, but each rank's augmentation stream is new
    (seeded from seed, rank and step), and a warning says the run is no longer bit-exact."""
    saved = int(checkpoint.get("world_size", 1))
    if saved == world_size():
        if is_distributed():
            own = checkpoint["rank_rng"][rank()]
            torch.set_rng_state(own["torch"])
            aug_gen.set_state(own["augment"])
            if "cuda" in own and device.type == "cuda":
                torch.cuda.set_rng_state(own["cuda"], device)
        return
    if is_distributed():
        aug_gen.manual_seed(_rank_seed(seed, rank(), checkpoint["progress"]["global_step"]))
    if is_main():
        warnings.warn(f"this run was checkpointed with {saved} process(es) and resumes with {world_size()}: the "
                      f"global batch and the data order carry on, but the augmentation streams are new, so the run "
                      f"is no longer bit-exact to an uninterrupted one.", stacklevel=2)
