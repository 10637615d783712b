"""TensorBoard for a run: ``tensorboard --logdir runs`` shows every run under ``RUN/tensorboard/``.

While pretraining (rank 0 only, ``train.tensorboard: true``, the default):

- every step: ``step/loss`` and ``step/lr``;
- every epoch: ``epoch/loss``, ``epoch/pairs_per_s`` (images per second, each giving all its views),
  ``epoch/embedding_std`` (the collapse watch), the method's own terms (``epoch/momentum``, ...), and
  ``epoch/knn_top1`` when the online kNN monitor ran (``--eval-every N``).

Every point's x is the global step (steps done), epochs included, so step and epoch curves share one axis.
Logging only reads numbers the loop already has: it draws no random numbers and changes no result.

After ``crlf evaluate``: the embedding projector (:func:`write_projector`) with the test embeddings (a fixed
subsample of at most :data:`PROJECTOR_POINTS`), their class names, and a sprite of the images.

Event files are append-only logs written while training runs, not artefacts: they cannot be written atomically
the way :mod:`crlf.io` writes checkpoints and metrics, and a kill loses the events not yet flushed. What keeps
them right is this: the writer is flushed before every checkpoint, so the log holds at least what the
checkpoint holds; and a resumed run opens its writer with ``purge_step`` at the first step it will redo, so
TensorBoard hides what the killed process logged past its checkpoint (no duplicate points). The projector's
files are written by ``SummaryWriter.add_embedding`` in place too; ``crlf evaluate`` rewrites them whole.
"""

from __future__ import annotations

import re
import shutil
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

LOG_DIR = "tensorboard"  # RUN/tensorboard/
PROJECTOR_POINTS = 2000  # the projector's browser page stays quick with a few thousand points
PROJECTOR_SEED = 0  # its own fixed draw (numpy), never the run's generators
SPRITE_MAX_SIDE = 8192  # TensorBoard's projector refuses sprite sheets larger than this
PROJECTOR_TAG = "test_embeddings"
# Epoch record keys that are bookkeeping, not curves.
_NOT_CURVES = {"epoch", "loss", "images_per_s", "lr", "steps", "epoch_time_s"}
_EVENT_FILE = re.compile(r"^events\.out\.tfevents\.(\d+)\.")


def _summary_writer():
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # tensorboard is a dependency of crlf, but an environment may lack it
        warnings.warn(f"TensorBoard logging is off: {exc}. Install it (pip install tensorboard) or set "
                      f"train.tensorboard: false to silence this.", stacklevel=3)
        return None
    return SummaryWriter


class TrainingBoard:
    """The run's event file while it trains. Use as a context manager: it is closed (flushed) on the way out."""

    def __init__(self, writer):
        self.writer = writer

    def step(self, global_step: int, loss: float, lr: float) -> None:
        self.writer.add_scalar("step/loss", loss, global_step)
        self.writer.add_scalar("step/lr", lr, global_step)

    def epoch(self, global_step: int, record: dict[str, Any]) -> None:
        """One epoch's record (``Trainer.finish_epoch``): the same numbers as its metrics.jsonl line."""
        scalars = {"loss": record["loss"], "pairs_per_s": record["images_per_s"]}
        scalars |= {k: v for k, v in record.items() if k not in _NOT_CURVES and isinstance(v, (int, float))}
        for key, value in scalars.items():
            self.writer.add_scalar(f"epoch/{key}", value, global_step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()

    def __enter__(self) -> TrainingBoard:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoBoard(TrainingBoard):
    """``train.tensorboard: false``, ranks other than 0, or no tensorboard installed: nothing is written."""

    def __init__(self):
        super().__init__(None)

    def step(self, global_step: int, loss: float, lr: float) -> None:
        pass

    def epoch(self, global_step: int, record: dict[str, Any]) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def training_board(run_dir: Path, enabled: bool, steps_done: int) -> TrainingBoard:
    """The board of a run that has done ``steps_done`` steps (0 for a new run, the checkpoint's global step for a
    resumed one). Everything an earlier process logged at a later step is purged: a resumed run redoes those steps
    and logs them again, and a new run in a folder whose first attempt died before any checkpoint starts clean."""
    writer_class = _summary_writer() if enabled else None
    if writer_class is None:
        return _NoBoard()
    log_dir = Path(run_dir) / LOG_DIR
    _wait_for_a_later_file_name(log_dir)
    return TrainingBoard(writer_class(str(log_dir), purge_step=steps_done + 1))


def _wait_for_a_later_file_name(log_dir: Path) -> None:
    """TensorBoard reads a folder's event files in name order, and the name starts with the creation time in whole
    seconds. A purge only hides points of files read before it, so a resumed run's file must sort after the
    killed one's: if that one was created this very second, wait for the next (at most a second, only then)."""
    if not log_dir.is_dir():
        return
    stamps = [int(m.group(1)) for p in log_dir.iterdir() if (m := _EVENT_FILE.match(p.name))]
    if stamps:
        deadline = time.monotonic() + 1.5  # a clock set back must not stall the run
        while time.time() < max(stamps) + 1 and time.monotonic() < deadline:
            time.sleep(0.05)


def projector_subsample(n: int, limit: int = PROJECTOR_POINTS) -> np.ndarray:
    """Indices of the points the projector shows: all of them up to ``limit``, else a fixed sorted draw."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(PROJECTOR_SEED).choice(n, size=limit, replace=False))


def write_projector(run_dir: Path, embeddings: np.ndarray, labels: np.ndarray, classes: list[str],
                    images: np.ndarray) -> Path | None:
    """The embedding projector of a run's test split into ``RUN/tensorboard/``: ``embeddings`` ``(N, D)``,
    ``labels`` ``(N,)`` indexing ``classes``, ``images`` ``(N, 3, H, W)`` uint8 for the sprite. At most
    :data:`PROJECTOR_POINTS` points (a fixed draw); returns the folder of the projector's files, or None if
    TensorBoard is not installed."""
    writer_class = _summary_writer()
    if writer_class is None:
        return None
    import torch
    import torch.nn.functional as F

    idx = projector_subsample(len(embeddings))
    thumbs = torch.from_numpy(np.ascontiguousarray(images[idx])).float() / 255  # (n, 3, H, W) in [0, 1]
    per_row = int(np.ceil(np.sqrt(len(idx))))  # the sprite is a square grid
    side = min(thumbs.shape[-1], SPRITE_MAX_SIDE // per_row)
    if side < thumbs.shape[-1]:
        thumbs = F.interpolate(thumbs, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    log_dir = Path(run_dir) / LOG_DIR
    folder = log_dir / "00000" / PROJECTOR_TAG  # add_embedding's layout for global_step 0
    shutil.rmtree(folder, ignore_errors=True)  # a re-evaluation replaces the projector, it does not add one
    with writer_class(str(log_dir)) as writer:
        writer.add_embedding(torch.from_numpy(np.ascontiguousarray(embeddings[idx], dtype=np.float32)),
                             metadata=[classes[int(i)] for i in labels[idx]], label_img=thumbs.clamp(0, 1),
                             global_step=0, tag=PROJECTOR_TAG)
    return folder
