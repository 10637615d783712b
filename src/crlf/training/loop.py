"""The pretraining loop, one for every method: epochs of steps, metrics, checkpoints, and the ways a run stops.

Per step: index a batch of uint8 images (``randperm``), build the views on the device (``augment.crops``:
two by default, or multi-crop), and hand them to :func:`crlf.training.step.train_step`, which runs the method
(backbone once per view size, its heads and loss in fp32), the backward pass, the optimiser and the
method's per-step hooks. No DataLoader: the decoded dataset is a single uint8 tensor, and on 2 CPU cores
worker processes would only fight the model for the cores.

How long the run trains, the learning rate and the view size of each epoch come from its
:class:`~crlf.training.schedule.Schedule` (by epochs or by a time budget); the clock and the faults the tests
inject come from its :class:`~crlf.training.hooks.TrainingHooks`. :func:`crlf.training.pretrain.pretrain`
assembles a run and calls this loop.

Under torchrun (or ``crlf pretrain --nproc N``) the same loop runs in every process: each rank takes its slice
of the global batch, the step runs through DDP, and rank 0 alone writes files (:mod:`crlf.training.distributed`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from crlf.config import Config, to_dict
from crlf.data.augment import build_augment, view_specs
from crlf.data.mapped import MappedImages
from crlf.errors import TrainingStopped
from crlf.methods.base import Method
from crlf.training import data_parallel, distributed
from crlf.training.checkpoint import rng_state, save_checkpoint
from crlf.training.hooks import NO_HOOKS, TrainingHooks
from crlf.training.monitors.collapse import warn_if_collapsed
from crlf.training.monitors.knn import knn_monitor
from crlf.training.monitors.online_probe import OnlineProbe
from crlf.training.monitors.tensorboard import training_board
from crlf.training.optim import set_learning_rate
from crlf.training.precision import autocast_dtype
from crlf.training.progress import Progress, write_training_metrics
from crlf.training.schedule import EpochPlan, EpochTiming, Schedule
from crlf.training.step import train_step
from crlf.training.stops import StopSignals, raise_interrupted, stop_on_out_of_memory

# The online probe's epoch sums (Progress.epoch_log_sums, so a resumed epoch keeps them): accuracy, steps scored.
PROBE_SUMS = ("online_probe_correct_sum", "online_probe_steps")


@dataclass
class TrainingModules:
    """What trains: the method (backbone included), its optimiser, and the online linear probe beside them
    (``train.online_probe``; None without labels)."""

    method: Method
    optimizer: torch.optim.Optimizer
    online_probe: OnlineProbe | None = None


@dataclass
class TrainingData:
    """The pretraining images on the device (``(N, 3, H, W)`` uint8, or memory-mapped) and their labels
    (``(N,)``, -1: none), with the random streams that order and augment them: ``order`` is common to every
    rank, ``augment`` is this rank's own (one stream for both in a single process)."""

    images: torch.Tensor | MappedImages
    labels: np.ndarray
    augment: torch.Generator
    order: torch.Generator


@dataclass
class RunOutput:
    """Where the run writes, the config its checkpoints record (``auto`` precision unresolved, so a resumed run
    decides as the first did), and whether it shows progress."""

    run_dir: Path
    saved_cfg: Config
    show_progress: bool = True


class Trainer:
    """One run's loop: epochs of steps, metrics, checkpoints, and the ways a run stops (signal, non-finite
    loss or weights, out of memory). ``cfg``: what the run trains with (precision ``auto`` resolved)."""

    def __init__(self, cfg: Config, modules: TrainingModules, data: TrainingData, state: Progress,
                 schedule: Schedule, output: RunOutput, hooks: TrainingHooks = NO_HOOKS):
        self.cfg, self.state, self.schedule, self.hooks = cfg, state, schedule, hooks
        self.method, self.optimizer, self.probe = modules.method, modules.optimizer, modules.online_probe
        self.images, self.labels, self.aug_gen, self.perm_gen = data.images, data.labels, data.augment, data.order
        self.run_dir, self.saved_cfg, self.progress = output.run_dir, output.saved_cfg, output.show_progress
        device = self.images.device
        self.label_tensor = torch.as_tensor(self.labels, dtype=torch.long, device=device)  # (N,) -1: none
        self.model = data_parallel.wrap(self.method, cfg.train.sync_batchnorm, device)  # DDP with several processes
        self.augment = build_augment(cfg.augment, cfg.data.image_size)
        self.batch = cfg.train.batch_size
        self.autocast_dtype = autocast_dtype(cfg.train.precision, device)
        self.resume_hint = distributed.resume_command(self.run_dir)
        self.lr = schedule.learning_rate()
        # TensorBoard (rank 0, train.tensorboard): it only reads numbers the loop already has
        self.board = training_board(self.run_dir, cfg.train.tensorboard and distributed.is_main(), state.global_step)
        self.epoch_plan: EpochPlan | None = None  # the epoch under way

    def run(self) -> None:
        """Train until the schedule is finished; a signal stops after a checkpoint."""
        where = lambda: f"epoch {self.state.epoch + 1} step {self.state.step + 1}"  # noqa: E731
        with self.board, StopSignals() as stop, distributed.stop_on_lost_rank(where, self.resume_hint):
            while not self.schedule.finished():
                self.train_epoch(stop)

    def train_epoch(self, stop: StopSignals) -> None:
        state, cfg, hooks, clock = self.state, self.cfg, self.hooks, self.hooks.clock
        plan = self.epoch_plan = self.schedule.start_epoch()
        if state.step == 0:
            state.perm = torch.randperm(len(self.images), generator=self.perm_gen)
        specs = view_specs(cfg.augment, cfg.data.image_size, plan.view_size)
        steps = plan.steps
        bar = tqdm(total=steps, initial=state.step, desc=f"epoch {state.epoch + 1}/{plan.of_epochs}",
                   unit="step", disable=not self.progress, dynamic_ncols=True)
        self.model.train()
        while state.step < steps:
            if self.schedule.stop_before_step():
                steps = state.step
                break
            loss_value, dt = self.step(specs)
            bar.set_postfix(loss=f"{loss_value:.3f}", img_s=f"{self.batch / dt:.0f}", refresh=False)
            bar.update(1)
            hooks.after_step(state.global_step)
            if state.step < steps:
                every = cfg.train.checkpoint_every_steps
                signum = distributed.agreed_signal(stop.received)  # every rank stops after the same step
                if (every and state.global_step % every == 0) or signum:
                    self.write_checkpoint()
                if signum:
                    bar.close()
                    raise_interrupted(signum, state, self.resume_hint)
        bar.close()
        if steps == 0:  # the schedule ended before this epoch's first step: nothing to record
            return
        record = self.finish_epoch(steps)
        checkpoint_start = clock()
        self.write_checkpoint()
        self.schedule.spend(clock() - checkpoint_start)
        hooks.after_epoch_checkpoint(state.epoch)
        if self.progress:
            knn = f", kNN monitor {record['knn_top1']:.1%}" if "knn_top1" in record else ""
            summary = self.schedule.summary()
            tqdm.write(f"epoch {record['epoch']}: loss {record['loss']:.4f}, {record['images_per_s']:.0f} img/s, "
                       f"{record['epoch_time_s']:.0f} s{knn}{f'; {summary}' if summary else ''}")
        signum = distributed.agreed_signal(stop.received)
        if signum:
            raise_interrupted(signum, state, self.resume_hint)

    def step(self, specs) -> tuple[float, float]:
        """One optimisation step; returns its loss and wall time."""
        state, batch, clock = self.state, self.batch, self.hooks.clock
        t0 = clock()
        step_clock, self.lr = self.schedule.step_clock(), self.schedule.learning_rate()
        set_learning_rate(self.optimizer, self.lr)
        idx = state.perm[state.step * batch:(state.step + 1) * batch]  # (B,) the global batch
        idx = distributed.shard(idx).to(self.images.device)  # (B / W,) this rank's part: all of it in one process
        with stop_on_out_of_memory(state, batch, self.images.device, self.run_dir, self.resume_hint):
            self.hooks.before_forward(state.global_step, self.images.device)
            views = self.augment(self.images[idx], self.aug_gen, specs)  # [(B, 3, S, S)], global views first
            loss_value, logs = train_step(self.model, self.optimizer, views, step_clock, self.autocast_dtype,
                                          check_loss=self.check_loss)
            if self.probe is not None:  # after the method's step, on its detached features: it changes none of it
                accuracy = self.probe.step(self.method.last_features, self.label_tensor[idx])
                if accuracy is not None:
                    logs = {**logs, PROBE_SUMS[0]: accuracy, PROBE_SUMS[1]: 1.0}
        dt = clock() - t0
        state.step += 1
        state.global_step += 1
        state.step_losses.append(loss_value)
        state.epoch_loss_sum += loss_value
        for key, value in logs.items():
            state.epoch_log_sums[key] = state.epoch_log_sums.get(key, 0.0) + value
        state.epoch_time_s += dt
        state.train_time_s += dt
        self.schedule.spend(dt)
        self.board.step(state.global_step, loss_value, self.lr)
        return loss_value, dt

    def check_loss(self, loss_value: float) -> float:
        """After the forward pass, before any update: stop on a non-finite loss with the weights untouched."""
        state = self.state
        loss_value = self.hooks.loss(loss_value, state.global_step)
        if not math.isfinite(loss_value):
            raise TrainingStopped(
                f"loss became {loss_value} at epoch {state.epoch + 1} step {state.step + 1} "
                f"(global step {state.global_step + 1}, lr {self.lr:g}); training stopped before the update. "
                f"The last good checkpoint in '{self.run_dir}' is kept. {self.method.divergence_advice}, "
                f"then resume with: {self.resume_hint}"
            )
        self.hooks.mid_step(state.global_step)  # tests: a signal arriving mid-step
        return loss_value

    def finish_epoch(self, steps: int) -> dict[str, Any]:
        """The epoch's record (metrics.jsonl); ``steps``: how many it ran (fewer when the schedule cuts the last epoch short)."""
        state, cfg, clock = self.state, self.cfg, self.hooks.clock
        logs = {k: v / steps for k, v in state.epoch_log_sums.items() if k not in PROBE_SUMS}
        spread = logs.pop("embedding_std", float("nan"))
        probe_sum, probe_steps = (state.epoch_log_sums.get(k, 0.0) for k in PROBE_SUMS)
        if probe_steps:  # the mean over the steps that had labels
            logs["online_probe_top1"] = probe_sum / probe_steps
        if distributed.is_main():  # the logs are means over the ranks: one warning is enough
            warn_if_collapsed(spread, self.method.embedding_dim, state.epoch + 1,
                              with_temperature=hasattr(cfg.method, "temperature"))
        size = self.epoch_plan.view_size
        record = {"epoch": state.epoch + 1, "loss": state.epoch_loss_sum / steps, "lr": self.lr,
                  "epoch_time_s": round(state.epoch_time_s, 3),
                  "images_per_s": round(steps * self.batch / state.epoch_time_s, 1),
                  "embedding_std": round(spread, 5), "steps": steps, "view_size": size,
                  **{k: round(v, 6) for k, v in logs.items()}}
        if (cfg.train.eval_every and (state.epoch + 1) % cfg.train.eval_every == 0 and self.labels.max() >= 0
                and distributed.is_main()):  # rank 0's record is the one written
            t0 = clock()
            record["knn_top1"] = round(knn_monitor(self.method.backbone, self.images, self.labels, cfg), 4)
            monitor_s = clock() - t0
        else:
            monitor_s = 0.0
        record.update(self.schedule.end_epoch(EpochTiming(steps, size, monitor_s)))
        state.history.append(record)
        self.board.epoch(state.global_step, record)
        state.epoch += 1
        state.step, state.epoch_loss_sum, state.epoch_log_sums, state.epoch_time_s = 0, 0.0, {}, 0.0
        if distributed.is_main():
            write_training_metrics(self.run_dir, state)
        return record

    def write_checkpoint(self) -> None:
        state = self.checkpoint_state()  # on every rank: it gathers every rank's random state
        if distributed.is_main():
            self.board.flush()  # the event file holds at least what the checkpoint holds
            save_checkpoint(self.run_dir, state, self.hooks)

    def checkpoint_state(self) -> dict[str, Any]:
        method_state = self.method.state_dict()
        self.stop_if_not_finite(method_state)
        probe = {"probe": self.probe.checkpoint()} if self.probe is not None else {}
        return {"config": to_dict(self.saved_cfg), "method": method_state, "optimizer": self.optimizer.state_dict(),
                **probe,
                "rng": rng_state(self.perm_gen), "perm": self.state.perm,
                "step_losses": torch.tensor(self.state.step_losses, dtype=torch.float64),
                "progress": self.state.counters(),
                **distributed.rank_rng_record(self.aug_gen, self.images.device)}  # world size, per-rank streams

    def stop_if_not_finite(self, method_state: dict[str, torch.Tensor]) -> None:
        """Never checkpoint inf/nan weights: a loss can stay finite for a step after the weights overflow
        (e.g. a BatchNorm running variance), and that checkpoint would replace the last good one."""
        for name, tensor in method_state.items():
            if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                loss = self.state.step_losses[-1] if self.state.step_losses else float("nan")
                raise TrainingStopped(
                    f"the weights became non-finite by global step {self.state.global_step} ('{name}' holds "
                    f"inf/nan; last loss {loss:.4g}, lr {self.lr:g}); training stopped without saving them. The "
                    f"last good checkpoint in '{self.run_dir}' is kept. {self.method.divergence_advice}, then "
                    f"resume with: {self.resume_hint}"
                )
