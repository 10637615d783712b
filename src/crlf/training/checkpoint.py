"""Checkpoints: a dict of state dicts, plain-data config, counters and RNG states (all tensors or plain
Python), so that ``torch.load(weights_only=True)`` reads them and unpickling can never run code.

Writes go to a temp file in the run folder, are fsync'ed, and only then replace ``checkpoint.pt``; the
previous checkpoint is kept as ``checkpoint.prev.pt`` so a damaged latest file still leaves one to
resume from.
"""

from __future__ import annotations

import io
import os
import pickle
import random
import re
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crlf.errors import UsageError
from crlf.io import atomic_open
from crlf.training.hooks import NO_HOOKS, TrainingHooks

LATEST, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"
NEXT = ".checkpoint.pt.next"  # a complete new checkpoint between its write and its rename
# Format 2: {"method": Method.state_dict()} holds the backbone and every part of the method (heads, momentum
# target, queue, centre). Format 1 (SimCLR only, before the Method interface): {"encoder", "head"}.
FORMAT = 2
READABLE_FORMATS = (1, 2)


def rng_state(aug_gen: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "augment": aug_gen.get_state(),
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any], aug_gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    aug_gen.set_state(state["augment"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, state: dict[str, Any], hooks: TrainingHooks = NO_HOOKS) -> Path:
    """Atomically write ``checkpoint.pt``, keeping the one before as ``checkpoint.prev.pt``; ``hooks``: the
    faults the tests inject between the writes.

    A kill at any moment leaves a loadable ``checkpoint.pt`` or ``checkpoint.prev.pt`` (between the two
    renames only the latter); a failed write (full disk) leaves both untouched and raises naming the path.
    """
    latest = run_dir / LATEST
    tmp = run_dir / NEXT
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    data = buffer.getbuffer()
    step = state.get("progress", {}).get("global_step", -1)
    try:
        with atomic_open(tmp) as handle:
            hooks.in_checkpoint_write(handle, data, step)
            handle.write(data)
    except OSError as exc:
        reason = getattr(exc.__cause__, "strerror", None) or exc.strerror or exc
        raise OSError(exc.errno, f"could not write checkpoint '{latest}': {reason}; the previous checkpoint "
                                 f"is unchanged") from exc
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
    hooks.in_checkpoint_rotate(step)
    os.replace(tmp, latest)
    return latest


def remove_partial_writes(run_dir: Path) -> list[Path]:
    """Delete temp files a killed process left in ``run_dir`` (never a finished artefact); returns them."""
    stale = [p for p in Path(run_dir).glob(".*") if p.is_file() and (p.name == NEXT or p.name.endswith(".tmp"))]
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """Load one checkpoint safely, or raise UsageError naming the file and what is wrong with it."""
    if not path.is_file():
        raise UsageError(f"checkpoint '{path}' does not exist.")
    if path.stat().st_size == 0:
        raise UsageError(f"checkpoint '{path}' is empty (0 bytes); it was cut off while being written.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's own text advises weights_only=False, i.e. running the file's code: never pass that on.
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise UsageError(f"checkpoint '{path}' is corrupt or not a PyTorch checkpoint: it does not unpickle "
                             f"as tensors and plain data.") from None
        raise UsageError(
            f"checkpoint '{path}' was refused: unpickling it would call '{found.group(1)}', i.e. run code, and "
            f"CRLF loads checkpoints as tensors and plain data only (torch.load(weights_only=True)); nothing "
            f"in it was run. Only use checkpoints written by CRLF, from a source you trust."
        ) from None
    except Exception as exc:  # noqa: BLE001 - damaged bytes surface as RuntimeError, EOFError, IndexError, ...
        detail = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UsageError(f"checkpoint '{path}' is corrupt or truncated ({detail}).") from None
    if not isinstance(state, dict) or state.get("format") not in READABLE_FORMATS:
        found = state.get("format") if isinstance(state, dict) else None
        hint = (f" It was written by a newer CRLF (format {found}); upgrade CRLF to resume it."
                if isinstance(found, int) and found > FORMAT else "")
        raise UsageError(f"checkpoint '{path}' is not a CRLF checkpoint (formats {READABLE_FORMATS}).{hint}")
    expected = "method" if state["format"] == 2 else "encoder"
    if expected not in state:
        raise UsageError(f"checkpoint '{path}' is damaged: a format-{state['format']} checkpoint without "
                         f"'{expected}'.")
    return upgrade(state)


def upgrade(state: dict[str, Any]) -> dict[str, Any]:
    """A format-1 checkpoint (SimCLR: ``encoder`` + ``head``) in format 2's layout: the same tensors under
    the SimCLR method's names (``backbone.*``, ``projector.*``), so such a run resumes exactly."""
    if state["format"] == 2:
        return state
    method = {f"backbone.{k}": v for k, v in state.pop("encoder").items()}
    method |= {f"projector.{k}": v for k, v in state.pop("head").items()}
    progress = dict(state["progress"])
    progress["epoch_log_sums"] = {"embedding_std": progress.pop("epoch_std_sum", 0.0)}
    return {**state, "format": 2, "method": method, "progress": progress, "upgraded_from": 1}


def find_resumable(run_dir: Path, explicit: Path | None = None) -> tuple[dict[str, Any], Path]:
    """The newest loadable checkpoint of ``run_dir`` (or exactly ``explicit``), warning about bad ones."""
    if explicit is not None:
        return load_checkpoint_file(explicit), explicit
    latest, previous = run_dir / LATEST, run_dir / PREVIOUS
    problems: list[tuple[Path, str]] = []
    for path in (latest, previous):
        if not path.exists():
            continue
        try:
            state = load_checkpoint_file(path)
        except UsageError as exc:
            problems.append((path, str(exc)))
            continue
        for bad, why in problems:
            # Moved aside, so the next save cannot rotate the bad file over the good one it fell back to.
            kept = bad.with_name(bad.name + ".corrupt")
            os.replace(bad, kept)
            warnings.warn(f"{why} Resuming from the older checkpoint '{path}' instead; the bad file was moved "
                          f"to '{kept}'.", stacklevel=2)
        if path == previous and not problems:
            warnings.warn(f"'{run_dir}' has no {LATEST} (the last save was cut off); resuming from '{path}'.",
                          stacklevel=2)
        return state, path
    if problems:
        raise UsageError(f"no usable checkpoint to resume from in '{run_dir}': " + " ".join(why for _, why in problems)
                         + " Nothing was changed; start a new run with a new --out.")
    raise UsageError(f"nothing to resume in '{run_dir}': it holds no {LATEST}. Drop --resume to start a new run.")
