"""What a run trains with on this machine: the precision probe's choice, and the budget plan it keeps.

:func:`resolve_run_precision` turns ``train.precision: auto`` into a measured setting (:mod:`crlf.probe`);
:func:`start_budget_plan` makes the ``--budget`` plan (:mod:`crlf.budget`) from the probe's step times, or
re-plans a resumed one; :class:`BudgetKeeper` is the plan in force during the loop (:mod:`crlf.train`): which
steps and view sizes the plan runs, where the schedules stand, the time spent, the re-plan after each epoch.
The budget counts the probe, the steps and the checkpoints; decoding and the kNN monitor are outside it.
Under several processes rank 0's clock decides for every rank, so that all of them run the same steps.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from crlf import distributed
from crlf.budget import BudgetPlan, check_budget_fits, plan_budget, replan_after_epoch
from crlf.config import Config
from crlf.io import atomic_write_text
from crlf.methods.base import StepClock
from crlf.optim import learning_rate_at_progress
from crlf.probe import ProbeResult, Setting, resolve_precision

PLAN_FILE = "budget_plan.json"


def run_view_sizes(cfg: Config) -> list[int]:
    """The global view sides a run trains at: low resolution (if on) and full."""
    t, full = cfg.train, cfg.data.image_size
    return [t.low_res_size, full] if t.low_res_epochs and t.low_res_size and t.low_res_size != full else [full]


def low_res_fraction(cfg: Config) -> float:
    """The recipe's share of epochs at low resolution, which a budget plan keeps."""
    return min(1.0, cfg.train.low_res_epochs / cfg.train.epochs) if len(run_view_sizes(cfg)) > 1 else 0.0


def resolve_run_precision(cfg: Config, device: torch.device, state: Any, num_images: int, progress: bool
                          ) -> tuple[Config, ProbeResult | None]:
    """The config the run trains with (``auto`` resolved to a measured precision and layout), and the probe's
    result. ``state``: the run's ``train.Progress``; a resumed run keeps its recorded choice. The probe also
    gives the budget planner its step times."""
    need_timings = bool(cfg.train.budget_minutes) and state.budget_plan is None
    if state.precision is not None and not need_timings:  # resumed: the choice made when the run started
        rec = state.precision
        probe = ProbeResult(Setting(rec["precision"], rec["channels_last"]), rec["rule"], {}, 0.0)
    else:
        log = tqdm.write if progress else None
        batch = cfg.train.batch_size // distributed.world_size()  # each process times its own share
        probe = resolve_precision(cfg, device, run_view_sizes(cfg), need_timings=need_timings, batch_size=batch,
                                  num_images=num_images, log=log)  # rank 0's answer on every rank
    if probe is None:
        return cfg, None
    if state.precision is None:
        state.precision = probe.record()
    s = probe.setting
    train = dataclasses.replace(cfg.train, precision=s.precision, channels_last=s.channels_last)
    return dataclasses.replace(cfg, train=train), probe


def start_budget_plan(cfg: Config, state: Any, probe: ProbeResult | None, steps_per_epoch: int
                      ) -> BudgetPlan | None:
    """The budget plan: new from the probe's step times, or the resumed run's, re-planned for what is left
    (a new ``--budget`` on ``--resume`` replaces the old one; the time already spent counts)."""
    if not cfg.train.budget_minutes:
        return None
    budget_s = cfg.train.budget_minutes * 60
    if state.budget_plan is not None:
        plan = BudgetPlan.from_dict(state.budget_plan)  # its step times; the budget may be a new one
        return plan_budget(budget_s, steps_per_epoch, plan.low_step_s, plan.full_step_s,
                           low_fraction=low_res_fraction(cfg), low_size=plan.low_size, full_size=plan.full_size,
                           spent_s=state.budget_spent_s, done_steps=state.global_step, previous=plan)
    assert probe is not None and probe.timings, "a budget needs the probe's step times"
    sizes = run_view_sizes(cfg)
    state.budget_spent_s += probe.probe_s  # timing the steps is part of what the user waits for
    full_s, low_s = probe.step_seconds(sizes[-1]), probe.step_seconds(sizes[0])
    check_budget_fits(budget_s, state.budget_spent_s, low_s)
    return plan_budget(budget_s, steps_per_epoch, low_s, full_s, low_fraction=low_res_fraction(cfg),
                       low_size=sizes[0], full_size=sizes[-1], spent_s=state.budget_spent_s)


class BudgetKeeper:
    """The plan in force during the loop. ``state`` is the run's ``train.Progress``: the plan and the time spent
    live there (so checkpoints hold them); ``clock`` reads seconds (the loop's, injectable in tests)."""

    def __init__(self, plan: BudgetPlan, state: Any, run_dir: Path, low_fraction: float, steps_per_epoch: int,
                 announce: bool, clock=time.perf_counter):
        self.state, self.run_dir, self.low_fraction, self.steps_per_epoch = state, run_dir, low_fraction, steps_per_epoch
        self.clock = clock
        self.epoch_start = (clock(), state.train_time_s, state.step)  # wall, step time so far, first step
        self.adopt(plan, announce)

    def adopt(self, plan: BudgetPlan, announce: bool = False) -> None:
        """Make ``plan`` the one in force: in the checkpoint, in RUN/budget_plan.json, and (once) on screen."""
        self.plan = plan
        first = (self.state.budget_plan or {}).get("first_plan") or plan.describe()
        self.state.budget_plan = {**plan.to_dict(), "first_plan": first}
        self.save()
        if announce and distributed.is_main():
            tqdm.write(plan.describe())

    def save(self) -> None:
        """RUN/budget_plan.json (rank 0): after every re-plan, and once more when training ends."""
        if distributed.is_main():
            atomic_write_text(self.run_dir / PLAN_FILE, json.dumps(self.record(), indent=1) + "\n")

    def record(self) -> dict:
        """RUN/budget_plan.json, and config.json's ``budget``."""
        return {"budget_minutes": self.plan.budget_s / 60, "spent_s": round(self.state.budget_spent_s, 1),
                "plan": self.plan.to_dict(), "first_plan": self.state.budget_plan["first_plan"],
                "precision": self.state.precision}

    # -- what the plan runs ------------------------------------------------------------------------------
    def finished(self) -> bool:
        return self.state.global_step >= self.plan.total_steps

    def epoch_first_step(self) -> int:
        return self.state.global_step - self.state.step

    def epoch_steps(self) -> int:
        """Steps in the current epoch: all of them, but the plan's last epoch, cut to fit."""
        return max(0, min(self.steps_per_epoch, self.plan.total_steps - self.epoch_first_step()))

    def view_size(self) -> int:
        return self.plan.view_size(self.epoch_first_step())

    def schedule_clock(self) -> StepClock:
        """The plan's progress in planned time, expressed in the plan's epochs (so warm-ups given in epochs
        scale with it): what the learning rate and every method's schedules follow."""
        total = self.plan.epochs
        return StepClock(self.plan.progress(self.state.global_step) * total, total)

    def learning_rate(self, cfg: Config) -> float:
        step = self.state.global_step
        return learning_rate_at_progress(cfg, self.plan.progress(step), self.plan.progress(step + 1),
                                         self.plan.epochs)

    # -- the clock ---------------------------------------------------------------------------------------
    def stop_before_step(self) -> bool:
        """Would the next step end past the budget (a machine that slowed down mid-epoch)? Then the plan ends
        here, on every rank alike; the schedules are near their end anyway."""
        plan, state = self.plan, self.state
        over = state.budget_spent_s + plan.step_seconds(state.global_step) > plan.budget_s
        if distributed.any_rank(over):
            self.adopt(dataclasses.replace(plan, total_steps=state.global_step))
            return True
        return False

    def epoch_started(self) -> None:
        self.epoch_start = (self.clock(), self.state.train_time_s, self.state.step)

    def count(self, seconds: float) -> None:
        self.state.budget_spent_s += seconds

    def end_epoch(self, record: dict[str, Any], steps: int, monitor_s: float) -> None:
        """Count what the epoch cost beyond its steps (not the kNN monitor: evaluation is outside the budget),
        then re-plan the rest from its measured cost per step; ``record`` (metrics.jsonl) gets both."""
        state = self.state
        wall_start, step_time_start, first_step = self.epoch_start
        epoch_wall_s = self.clock() - wall_start - monitor_s
        state.budget_spent_s += max(0.0, epoch_wall_s - (state.train_time_s - step_time_start))
        record["budget_spent_s"] = round(state.budget_spent_s, 1)
        ran = steps - first_step
        if ran > 0 and not self.finished():
            # rank 0's clock decides for every rank: all of them must run the same steps
            spent, plan = distributed.decided_on_main(lambda: (state.budget_spent_s, replan_after_epoch(
                self.plan, spent_s=state.budget_spent_s, done_steps=state.global_step,
                measured_size=record["view_size"], measured_step_s=epoch_wall_s / ran,
                low_fraction=self.low_fraction)))
            state.budget_spent_s = spent
            record["budget_plan"] = plan.describe()
            self.adopt(plan)

    def summary(self) -> str:
        """For the epoch line: ``budget 4.5 of 20 min, 29 epochs at 16 px + 7.12 epochs at 32 px, ...``."""
        return (f"budget {self.state.budget_spent_s / 60:.1f} of {self.plan.budget_s / 60:g} min, "
                f"{self.plan.describe().split(': ', 1)[1]}")
