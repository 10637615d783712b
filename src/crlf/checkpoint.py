"""Checkpoints: a dict of state dicts, plain-data config, counters and RNG states (all tensors or plain
Python), so that ``torch.load(weights_only=True)`` reads them and unpickling can never run code.

Writes go to a temp file in the run folder, are fsync'ed, and only then replace ``checkpoint.pt``; the
previous checkpoint is kept as ``checkpoint.prev.pt`` so a damaged latest file still leaves one to
resume from.
"""

from __future__ import annotations

import os
import pickle
import random
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crlf.errors import UsageError
from crlf.io import atomic_save_with

LATEST, PREVIOUS = "checkpoint.pt", "checkpoint.prev.pt"
FORMAT = 1


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


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> Path:
    """Atomically write ``checkpoint.pt``, keeping the one before as ``checkpoint.prev.pt``."""
    latest = run_dir / LATEST
    tmp = run_dir / ".checkpoint.pt.next"
    atomic_save_with(tmp, lambda buf: torch.save({"format": FORMAT, **state}, buf))
    if latest.exists():
        os.replace(latest, run_dir / PREVIOUS)
    os.replace(tmp, latest)
    return latest


def load_checkpoint_file(path: Path) -> dict[str, Any]:
    """Load one checkpoint safely, or raise UsageError naming the file and what is wrong with it."""
    if not path.is_file():
        raise UsageError(f"checkpoint '{path}' does not exist.")
    if path.stat().st_size == 0:
        raise UsageError(f"checkpoint '{path}' is empty (0 bytes); it was cut off while being written.")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UsageError(
            f"checkpoint '{path}' was refused: loading it would run code or it holds objects other than "
            f"tensors and plain data ({str(exc).splitlines()[0]}). Only load checkpoints you trust, "
            f"and only ones written by CRLF."
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as exc:
        raise UsageError(f"checkpoint '{path}' is corrupt or truncated ({str(exc).splitlines()[0]}).") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "encoder" not in state:
        raise UsageError(f"checkpoint '{path}' is not a CRLF checkpoint (format {FORMAT}).")
    return state


def find_resumable(run_dir: Path, explicit: Path | None = None) -> tuple[dict[str, Any], Path]:
    """The newest loadable checkpoint of ``run_dir`` (or exactly ``explicit``), warning about bad ones."""
    if explicit is not None:
        return load_checkpoint_file(explicit), explicit
    candidates = [run_dir / LATEST, run_dir / PREVIOUS]
    problems = []
    for path in candidates:
        if not path.exists():
            continue
        try:
            return load_checkpoint_file(path), path
        except UsageError as exc:
            problems.append(str(exc))
            warnings.warn(f"{exc} Falling back to an older checkpoint.", stacklevel=2)
    if problems:
        raise UsageError("no usable checkpoint to resume from in '" + str(run_dir) + "': " + " ".join(problems))
    raise UsageError(f"nothing to resume in '{run_dir}': it holds no {LATEST}. Drop --resume to start a new run.")
