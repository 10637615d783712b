"""How long a run trains and where its schedules stand: one interface, two ways to bound a run.

The loop (:mod:`crlf.training.loop`) asks its :class:`Schedule` what it needs and never asks how the run is
bounded: this epoch's steps and view size, the learning rate and progress of the step about to run, whether
to stop before it, whether the run is finished; it reports the time it spends and each epoch's end.

* :class:`EpochSchedule`: ``train.epochs`` epochs; schedules follow the epoch count.
* :class:`BudgetSchedule` (``--budget MINUTES``): the plan of :mod:`crlf.training.budget_planner`, made from
  the precision probe's step times and re-planned after every epoch from the time it took; schedules follow
  the plan's progress in planned time. The budget counts the probe, the steps and the checkpoints; decoding
  and the kNN monitor are outside it. Under several processes rank 0's clock decides for every rank, so that
  all of them run the same steps.

:func:`build_schedule` picks one for a config (a resumed budget run re-plans what is left).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from tqdm.auto import tqdm

from crlf.config import Config
from crlf.io import atomic_write_text
from crlf.methods.base import StepClock
from crlf.training import distributed
from crlf.training.budget_planner import BudgetPlan, check_budget_fits, plan_budget, replan_after_epoch
from crlf.training.optim import learning_rate, learning_rate_at_progress
from crlf.training.progress import Progress

if TYPE_CHECKING:
    from crlf.training.precision import ProbeResult

PLAN_FILE = "budget_plan.json"


@dataclass(frozen=True)
class EpochPlan:
    """What one epoch runs: ``steps`` (fewer than an epoch's worth only at a budget's end), global views of
    ``view_size`` px; ``of_epochs``: the run's epoch count, for the progress bar."""

    steps: int
    view_size: int
    of_epochs: int


@dataclass(frozen=True)
class EpochTiming:
    """How an epoch went: the steps it ran (a resumed epoch's included), their view size, and the seconds the
    kNN monitor took (evaluation: outside a budget)."""

    steps: int
    view_size: int
    monitor_s: float


class Schedule(Protocol):
    """What the loop asks; ``state`` (the run's :class:`Progress`) says where the run stands."""

    def finished(self) -> bool: ...
    def start_epoch(self) -> EpochPlan: ...  # this epoch's steps and view size
    def step_clock(self) -> StepClock: ...  # progress of the step about to run, for the methods' schedules
    def learning_rate(self) -> float: ...  # the learning rate of the step about to run
    def stop_before_step(self) -> bool: ...  # True: the run ends here, before the next step
    def spend(self, seconds: float) -> None: ...  # wall time the loop spent (a step, a checkpoint)
    def end_epoch(self, measured: EpochTiming) -> dict: ...  # re-plan; returns what metrics.jsonl adds
    def summary(self) -> str: ...  # for the epoch line ('' when there is nothing to add)
    def finish(self) -> dict: ...  # when training ends: what config.json records


def run_view_sizes(cfg: Config) -> list[int]:
    """The global view sides a run trains at: low resolution (if on) and full."""
    t, full = cfg.train, cfg.data.image_size
    return [t.low_res_size, full] if t.low_res_epochs and t.low_res_size and t.low_res_size != full else [full]


def low_res_fraction(cfg: Config) -> float:
    """The recipe's share of epochs at low resolution, which a budget plan keeps."""
    return min(1.0, cfg.train.low_res_epochs / cfg.train.epochs) if len(run_view_sizes(cfg)) > 1 else 0.0


def view_size(cfg: Config, epoch: int) -> int:
    """Side of the global views in ``epoch`` (0-based): low resolution first if progressive resizing is on."""
    t = cfg.train
    return t.low_res_size if epoch < t.low_res_epochs else cfg.data.image_size


class EpochSchedule:
    """``train.epochs`` epochs of ``steps_per_epoch`` steps: warm-up and decay follow the step count."""

    def __init__(self, cfg: Config, state: Progress, steps_per_epoch: int):
        self.cfg, self.state, self.steps_per_epoch = cfg, state, steps_per_epoch

    def finished(self) -> bool:
        return self.state.epoch >= self.cfg.train.epochs

    def start_epoch(self) -> EpochPlan:
        return EpochPlan(self.steps_per_epoch, view_size(self.cfg, self.state.epoch), self.cfg.train.epochs)

    def step_clock(self) -> StepClock:
        state = self.state
        return StepClock(state.epoch + state.step / self.steps_per_epoch, self.cfg.train.epochs)

    def learning_rate(self) -> float:
        return learning_rate(self.cfg, self.state.global_step, self.steps_per_epoch)

    def stop_before_step(self) -> bool:
        return False

    def spend(self, seconds: float) -> None:
        pass

    def end_epoch(self, measured: EpochTiming) -> dict:
        return {}

    def summary(self) -> str:
        return ""

    def finish(self) -> dict:
        return {}


class BudgetSchedule:
    """The budget plan in force. The plan and the time spent live in ``state`` (so checkpoints hold them);
    ``clock`` reads seconds (the loop's, injected in tests)."""

    def __init__(self, cfg: Config, plan: BudgetPlan, state: Progress, run_dir: Path, steps_per_epoch: int,
                 announce: bool, clock: Callable[[], float] = time.perf_counter):
        self.cfg, self.state, self.run_dir, self.steps_per_epoch = cfg, state, run_dir, steps_per_epoch
        self.low_fraction = low_res_fraction(cfg)
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

    def finish(self) -> dict:
        self.save()  # the final time spent, checkpoints included
        return {"budget": self.record()}

    # -- what the plan runs ------------------------------------------------------------------------------
    def finished(self) -> bool:
        return self.state.global_step >= self.plan.total_steps

    def epoch_first_step(self) -> int:
        return self.state.global_step - self.state.step

    def start_epoch(self) -> EpochPlan:
        """Steps in the current epoch: all of them, but the plan's last epoch, cut to fit."""
        self.epoch_start = (self.clock(), self.state.train_time_s, self.state.step)
        steps = max(0, min(self.steps_per_epoch, self.plan.total_steps - self.epoch_first_step()))
        return EpochPlan(steps, self.plan.view_size(self.epoch_first_step()), math.ceil(self.plan.epochs))

    def step_clock(self) -> StepClock:
        """The plan's progress in planned time, expressed in the plan's epochs (so warm-ups given in epochs
        scale with it): what the learning rate and every method's schedules follow."""
        total = self.plan.epochs
        return StepClock(self.plan.progress(self.state.global_step) * total, total)

    def learning_rate(self) -> float:
        step = self.state.global_step
        return learning_rate_at_progress(self.cfg, self.plan.progress(step), self.plan.progress(step + 1),
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

    def spend(self, seconds: float) -> None:
        self.state.budget_spent_s += seconds

    def end_epoch(self, measured: EpochTiming) -> dict:
        """Count what the epoch cost beyond its steps (not the kNN monitor: evaluation is outside the budget),
        then re-plan the rest from its measured cost per step; metrics.jsonl gets both."""
        state = self.state
        wall_start, step_time_start, first_step = self.epoch_start
        epoch_wall_s = self.clock() - wall_start - measured.monitor_s
        state.budget_spent_s += max(0.0, epoch_wall_s - (state.train_time_s - step_time_start))
        added = {"budget_spent_s": round(state.budget_spent_s, 1)}
        ran = measured.steps - first_step
        if ran > 0 and not self.finished():
            # rank 0's clock decides for every rank: all of them must run the same steps
            spent, plan = distributed.decided_on_main(lambda: (state.budget_spent_s, replan_after_epoch(
                self.plan, spent_s=state.budget_spent_s, done_steps=state.global_step,
                measured_size=measured.view_size, measured_step_s=epoch_wall_s / ran,
                low_fraction=self.low_fraction)))
            state.budget_spent_s = spent
            added["budget_plan"] = plan.describe()
            self.adopt(plan)
        return added

    def summary(self) -> str:
        """For the epoch line: ``budget 4.5 of 20 min, 29 epochs at 16 px + 7.12 epochs at 32 px, ...``."""
        return (f"budget {self.state.budget_spent_s / 60:.1f} of {self.plan.budget_s / 60:g} min, "
                f"{self.plan.describe().split(': ', 1)[1]}")


def build_schedule(cfg: Config, state: Progress, probe: ProbeResult | None, steps_per_epoch: int, run_dir: Path,
                   announce: bool, clock: Callable[[], float] = time.perf_counter) -> Schedule:
    """The run's schedule: by epochs, or with ``train.budget_minutes`` the budget plan, new from the precision
    probe's step times or the resumed run's, re-planned for what is left (a new ``--budget`` on ``--resume``
    replaces the old one; the time already spent counts)."""
    if not cfg.train.budget_minutes:
        return EpochSchedule(cfg, state, steps_per_epoch)
    budget_s = cfg.train.budget_minutes * 60
    if state.budget_plan is not None:
        old = BudgetPlan.from_dict(state.budget_plan)  # its step times; the budget may be a new one
        plan = plan_budget(budget_s, steps_per_epoch, old.low_step_s, old.full_step_s,
                           low_fraction=low_res_fraction(cfg), low_size=old.low_size, full_size=old.full_size,
                           spent_s=state.budget_spent_s, done_steps=state.global_step, previous=old)
    else:
        assert probe is not None and probe.timings, "a budget needs the probe's step times"
        sizes = run_view_sizes(cfg)
        state.budget_spent_s += probe.probe_s  # timing the steps is part of what the user waits for
        full_s, low_s = probe.step_seconds(sizes[-1]), probe.step_seconds(sizes[0])
        check_budget_fits(budget_s, state.budget_spent_s, low_s)
        plan = plan_budget(budget_s, steps_per_epoch, low_s, full_s, low_fraction=low_res_fraction(cfg),
                           low_size=sizes[0], full_size=sizes[-1], spent_s=state.budget_spent_s)
    return BudgetSchedule(cfg, plan, state, run_dir, steps_per_epoch, announce, clock)
