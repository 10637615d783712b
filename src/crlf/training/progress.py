"""A run's progress: everything that changes during training besides module and optimiser state. The
checkpoint holds it, and ``metrics.jsonl`` / ``step_losses.npy`` are rewritten from it."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from crlf.io import atomic_write_text
from crlf.publish.export import save_array


@dataclass
class Progress:
    """Everything that changes during training, besides module and optimiser state."""

    epoch: int = 0  # epochs finished
    step: int = 0  # steps finished within the current epoch
    global_step: int = 0
    perm: torch.Tensor = field(default_factory=lambda: torch.empty(0, dtype=torch.int64))  # this epoch's order
    history: list[dict[str, Any]] = field(default_factory=list)  # one record per finished epoch
    step_losses: list[float] = field(default_factory=list)
    train_time_s: float = 0.0
    epoch_loss_sum: float = 0.0
    epoch_log_sums: dict[str, float] = field(default_factory=dict)  # the method's logs, summed over the epoch
    epoch_time_s: float = 0.0
    precision: dict | None = None  # the precision probe's record (crlf.training.precision): resumed runs keep its choice
    budget_plan: dict | None = None  # the budget plan in force (crlf.training.budget_planner), with --budget
    budget_spent_s: float = 0.0  # wall time counted against the budget: probe, steps, checkpoints
    resolution: dict | None = None  # data.image_size: auto's choice (crlf.training.resolution), for config.json

    def counters(self) -> dict[str, Any]:
        """Plain data for the checkpoint (the permutation and losses are stored as tensors beside it)."""
        return {k: v for k, v in asdict(self).items() if k not in ("perm", "step_losses")}

    @classmethod
    def from_checkpoint(cls, checkpoint: dict[str, Any]) -> Progress:
        p = checkpoint["progress"]
        return cls(p["epoch"], p["step"], p["global_step"], checkpoint["perm"], list(p["history"]),
                   checkpoint["step_losses"].tolist(), p["train_time_s"], p["epoch_loss_sum"],
                   dict(p["epoch_log_sums"]), p["epoch_time_s"], p.get("precision"), p.get("budget_plan"),
                   p.get("budget_spent_s", 0.0), p.get("resolution"))


def write_training_metrics(run_dir: Path, state: Progress) -> None:
    """``metrics.jsonl`` and ``step_losses.npy``, rewritten whole (atomically) from the checkpointed history:
    a resumed run never holds duplicate lines."""
    atomic_write_text(run_dir / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in state.history))
    save_array(run_dir / "step_losses.npy", np.asarray(state.step_losses, dtype=np.float64))
