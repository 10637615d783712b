"""Pretraining planned to a wall-clock budget (``--budget MINUTES``, config ``train.budget_minutes``).

Pure arithmetic over measured seconds per step: no clock in here, so the planner's choices are tested
with injected timings. The budget schedule (:mod:`crlf.training.schedule`) asks for a plan at the start, from the
step times the precision probe measured (:mod:`crlf.training.precision`), and again after every epoch, from the
time that epoch took.

Why plan rather than stop when time is up: a schedule that decays to zero at the end of the budget beats a
longer schedule cut short (Li, Yumer & Ramanan, "Budgeted Training", ICLR 2020, arXiv 1905.04753). So the
learning rate and every method's schedule (momentum, teacher temperature, warm-up) follow the plan's
*progress*, the fraction of its planned time that the steps done so far take, rather than the epoch count.

The recipe's shape is kept: with progressive resizing, the share of epochs at low resolution is the
config's ``train.low_res_epochs / train.epochs`` (fast-cpu: 8 of 10); low-resolution epochs are whole
epochs at the start, and the last full-resolution epoch may be cut short so the plan fills the budget.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

from crlf.errors import UsageError

PLAN_FRACTION = 0.985  # plan to 98.5 % of what is left: step times wander by a few % on a shared machine


@dataclass(frozen=True)
class BudgetPlan:
    """Steps ``[0, low_res_epochs * steps_per_epoch)`` at ``low_size`` px, the rest up to ``total_steps`` at
    ``full_size`` px. Progress runs from ``anchor_progress`` at ``anchor_step`` (the last re-plan) to 1 at
    ``total_steps``, in proportion to the planned seconds of the steps in between."""

    budget_s: float
    steps_per_epoch: int
    low_res_epochs: int
    total_steps: int
    low_size: int
    full_size: int
    low_step_s: float  # seconds per step at low_size (unused when low_res_epochs == 0)
    full_step_s: float  # seconds per step at full_size
    spent_s: float = 0.0  # budget spent when this plan was made
    anchor_step: int = 0
    anchor_progress: float = 0.0
    replans: int = 0

    @property
    def low_steps(self) -> int:
        return min(self.total_steps, self.low_res_epochs * self.steps_per_epoch)

    @property
    def epochs(self) -> float:
        """The plan's length in epochs (fractional when the last epoch is cut short)."""
        return self.total_steps / self.steps_per_epoch

    @property
    def full_res_epochs(self) -> float:
        return (self.total_steps - self.low_steps) / self.steps_per_epoch

    def view_size(self, step: int) -> int:
        return self.low_size if step < self.low_steps else self.full_size

    def step_seconds(self, step: int) -> float:
        return self.low_step_s if step < self.low_steps else self.full_step_s

    def planned_seconds(self, start: int, stop: int) -> float:
        """Planned time of steps ``[start, stop)``."""
        low = max(0, min(stop, self.low_steps) - start)
        full = max(0, stop - max(start, self.low_steps))
        return low * self.low_step_s + full * self.full_step_s

    @property
    def estimated_s(self) -> float:
        """Spent plus the planned time of every step still to run."""
        return self.spent_s + self.planned_seconds(self.anchor_step, self.total_steps)

    def progress(self, step: int) -> float:
        """Fraction of the plan done before ``step``, in [anchor_progress, 1]: what schedules follow."""
        rest = self.planned_seconds(self.anchor_step, self.total_steps)
        if rest <= 0:
            return 1.0
        done = self.planned_seconds(self.anchor_step, max(step, self.anchor_step))
        return min(1.0, self.anchor_progress + (1.0 - self.anchor_progress) * done / rest)

    def describe(self) -> str:
        """e.g. ``budget 20 min: 11 epochs at 16 px + 3 at 32 px, est. 19.3 min``."""
        parts = []
        if self.low_steps:
            parts.append(f"{_epochs(self.low_steps / self.steps_per_epoch)} at {self.low_size} px")
        if self.total_steps > self.low_steps or not parts:
            parts.append(f"{_epochs(self.full_res_epochs)} at {self.full_size} px")
        return (f"budget {self.budget_s / 60:g} min: {' + '.join(parts)}, est. {self.estimated_s / 60:.1f} min "
                f"({self.total_steps} steps)")

    def to_dict(self) -> dict:
        return {**asdict(self), "epochs": round(self.epochs, 3), "estimated_s": round(self.estimated_s, 1),
                "description": self.describe()}

    @classmethod
    def from_dict(cls, d: dict) -> BudgetPlan:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def _epochs(n: float) -> str:
    word = "epoch" if n == 1 else "epochs"
    return f"{n:g} {word}" if n == int(n) else f"{n:.2f} {word}"


def plan_budget(budget_s: float, steps_per_epoch: int, low_step_s: float, full_step_s: float, *,
                low_fraction: float, low_size: int, full_size: int, spent_s: float = 0.0,
                done_steps: int = 0, previous: BudgetPlan | None = None) -> BudgetPlan:
    """The plan that fills what is left of ``budget_s`` after ``spent_s`` and ``done_steps``.

    ``low_fraction``: the recipe's share of epochs at low resolution (0: none). Low-resolution epochs
    already begun stay at low resolution; once the full-resolution phase has started their count is fixed.
    Among the feasible counts of low-resolution epochs, the one whose share of the planned epochs is
    closest to ``low_fraction`` wins (ties: more steps). With a ``previous`` plan, progress continues from
    where it stood at ``done_steps``, so the schedules never jump back.
    """
    if min(low_step_s, full_step_s) <= 0 or steps_per_epoch <= 0:
        raise ValueError("step times and steps_per_epoch must be > 0")
    left = (budget_s - spent_s) * PLAN_FRACTION
    spe = steps_per_epoch
    in_full_phase = previous is not None and done_steps >= previous.low_steps and previous.low_steps > 0
    if low_fraction <= 0:
        candidates = [0]
    elif in_full_phase or (previous is not None and previous.low_res_epochs == 0):
        candidates = [previous.low_res_epochs]
    else:
        first = math.ceil(done_steps / spe)  # an epoch begun at low resolution ends at low resolution
        if low_fraction >= 1:
            candidates = [first + int(max(0.0, left) // (spe * low_step_s))]
        else:
            most = first + int(max(0.0, left) // (spe * low_step_s))
            candidates = list(range(first, most + 1))
    best: tuple[float, int, int] | None = None  # (share error, -total steps, low epochs)
    for low_epochs in candidates:
        low_left = max(0, low_epochs * spe - done_steps) * low_step_s
        if low_left > left and low_epochs * spe > done_steps and low_fraction < 1:
            continue
        if low_fraction >= 1:
            total = max(done_steps, low_epochs * spe)
        else:
            full_steps = int(max(0.0, left - low_left) // full_step_s)
            total = max(done_steps, low_epochs * spe) + full_steps
            if low_fraction > 0 and full_steps == 0 and total > done_steps:
                continue  # a recipe with full-resolution epochs ends with some full-resolution steps
        if total <= done_steps:
            continue
        share = min(low_epochs * spe, total) / total if low_fraction > 0 else 0.0
        key = (round(abs(share - low_fraction), 9), -total, low_epochs)
        if best is None or key < best:
            best = key
    if best is None:  # not even one step fits what is left: finish now
        low_epochs, total = (previous.low_res_epochs if previous else 0), done_steps
    else:
        low_epochs, total = best[2], -best[1]
    anchor_progress = previous.progress(done_steps) if previous is not None else 0.0
    return BudgetPlan(budget_s=budget_s, steps_per_epoch=spe, low_res_epochs=low_epochs, total_steps=total,
                      low_size=low_size, full_size=full_size, low_step_s=low_step_s, full_step_s=full_step_s,
                      spent_s=spent_s, anchor_step=done_steps, anchor_progress=anchor_progress,
                      replans=(previous.replans + 1) if previous is not None else 0)


def replan_after_epoch(plan: BudgetPlan, *, spent_s: float, done_steps: int, measured_size: int,
                       measured_step_s: float, low_fraction: float) -> BudgetPlan:
    """Re-plan the rest after an epoch that ran at ``measured_size`` px at ``measured_step_s`` seconds per step
    (its wall time, checkpoint included, over its steps). The other size's estimate is scaled by the same
    ratio until it is measured itself: a machine that slows down slows both."""
    if measured_size == plan.low_size and plan.low_steps > 0:
        low, full = measured_step_s, plan.full_step_s * measured_step_s / plan.low_step_s
    else:
        low, full = plan.low_step_s * measured_step_s / plan.full_step_s, measured_step_s
    return plan_budget(plan.budget_s, plan.steps_per_epoch, low, full, low_fraction=low_fraction,
                       low_size=plan.low_size, full_size=plan.full_size, spent_s=spent_s,
                       done_steps=done_steps, previous=plan)


def check_budget_fits(budget_s: float, spent_s: float, first_step_s: float) -> None:
    """A budget too small for one step is a usage error naming the smallest that fits."""
    if spent_s + first_step_s > budget_s * PLAN_FRACTION:
        smallest = math.ceil((spent_s + first_step_s) / PLAN_FRACTION / 60 * 100) / 100
        raise UsageError(
            f"--budget {budget_s / 60:g} min is too small: one training step takes {first_step_s:.2f} s here"
            + (f" after {spent_s:.1f} s already spent" if spent_s else "")
            + f". The smallest budget that fits one step is --budget {smallest:g} (minutes); nothing was trained."
        )


def plan_largest_side(budget_s: float, sides: list[int], steps_per_epoch: int,
                      step_seconds: Callable[[int], tuple[float, float]], low_size_of: Callable[[int], int], *,
                      low_fraction: float, min_epochs: float, spent_s: float = 0.0) -> tuple[int, BudgetPlan]:
    """The training side a budget affords: the largest of ``sides`` (ascending) whose plan still trains
    ``min_epochs`` epochs, with that plan; the smallest side when none does. ``step_seconds(side)``: seconds
    per step at its (low, full) view sizes; ``low_size_of(side)``: the low-resolution side that goes with it.

    Why a floor in epochs rather than the most pixels: a contrastive encoder learns from many passes over
    augmented views, and a budget spent on one or two passes at a high resolution trains a worse one than
    more passes at a lower resolution (96 px against 64 on 96-px mosaics, BENCHMARKS.md)."""
    if not sides:
        raise ValueError("no side to choose from")
    plan = None
    for side in sorted(sides, reverse=True):
        low_s, full_s = step_seconds(side)
        plan = plan_budget(budget_s, steps_per_epoch, low_s, full_s, low_fraction=low_fraction,
                           low_size=low_size_of(side), full_size=side, spent_s=spent_s)
        if plan.epochs >= min_epochs:
            return side, plan
    return min(sides), plan
