"""--budget: the planner's arithmetic on injected step times, re-planning, resume, and the loop's wiring.

No assertion here reads the wall clock: the planner is pure arithmetic, and the runs take their step times
from an injected probe (``crlf.training.precision.measure_step_times`` replaced) and their clock from the hooks
handed to the loop (``TrainingHooks(clock=...)``)."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path

import numpy as np
import pytest

from crlf.cli import build_parser, main, train_overrides
from crlf.config import load_config
from crlf.errors import Interrupted, UsageError
from crlf.training import precision as probe
from crlf.training.budget_planner import (
    PLAN_FRACTION,
    BudgetPlan,
    check_budget_fits,
    plan_budget,
    replan_after_epoch,
)
from crlf.training.hooks import TrainingHooks
from crlf.training.optim import learning_rate_at_progress

from conftest import REPO, make_image_folder


def plan(budget_s=200.0, spe=10, low=1.0, full=3.0, fraction=0.5, **kw) -> BudgetPlan:
    return plan_budget(budget_s, spe, low, full, low_fraction=fraction, low_size=16, full_size=32, **kw)


def test_the_plan_keeps_the_recipes_share_of_low_resolution_epochs_and_fills_the_budget():
    # 197 s to plan (98.5 %): 4 low epochs leave 52 full steps (share 0.43), 5 leave 49 (0.505), 6 leave 45 (0.57)
    p = plan()
    assert (p.low_res_epochs, p.total_steps) == (5, 99)
    assert p.estimated_s == 50 * 1.0 + 49 * 3.0 <= 200 * PLAN_FRACTION
    assert p.describe() == "budget 3.33333 min: 5 epochs at 16 px + 4.90 epochs at 32 px, est. 3.3 min (99 steps)"
    assert [p.view_size(s) for s in (0, 49, 50, 98)] == [16, 16, 32, 32]


@pytest.mark.parametrize("fraction, low_epochs, total", [(0.0, 0, 65), (1.0, 19, 190), (0.8, 11, 139)])
def test_the_plan_for_other_shapes(fraction, low_epochs, total):
    # fraction 0: only full-resolution steps (197 // 3); 1: whole low-resolution epochs only;
    # 0.8: 11 low epochs (110 s) leave 29 full steps, share 110 / 139 = 0.79 (10: 0.75, 12: 0.83)
    p = plan(fraction=fraction)
    assert (p.low_res_epochs, p.total_steps) == (low_epochs, total)
    assert p.estimated_s <= 200


def test_progress_runs_from_zero_to_one_in_planned_time():
    p = plan()
    assert p.progress(0) == 0 and p.progress(p.total_steps) == 1
    # a low-resolution step is a third of a full one: progress follows time, not step counts
    assert p.progress(50) == pytest.approx(50 / 197, abs=1e-9)
    assert p.progress(51) - p.progress(50) == pytest.approx(3 * (p.progress(50) - p.progress(49)))


def test_a_slow_epoch_replans_fewer_steps_that_still_fit_without_a_jump_in_progress():
    p = plan()
    # the first low-resolution epoch ran at 1.5 s per step instead of 1.0: the machine is slower
    slow = replan_after_epoch(p, spent_s=15.0, done_steps=10, measured_size=16, measured_step_s=1.5,
                              low_fraction=0.5)
    assert slow.full_step_s == pytest.approx(4.5)  # the other size scaled by the same ratio
    assert slow.total_steps < p.total_steps
    assert slow.estimated_s <= 200
    assert slow.progress(10) == pytest.approx(p.progress(10))  # the schedules continue where they stood
    assert slow.progress(slow.total_steps) == 1.0 and slow.replans == 1
    fast = replan_after_epoch(p, spent_s=5.0, done_steps=10, measured_size=16, measured_step_s=0.5,
                              low_fraction=0.5)
    assert fast.total_steps > p.total_steps and fast.estimated_s <= 200


def test_in_the_full_resolution_phase_the_low_resolution_epochs_are_fixed():
    p = plan()
    later = replan_after_epoch(p, spent_s=80.0, done_steps=60, measured_size=32, measured_step_s=3.0,
                               low_fraction=0.5)
    assert later.low_res_epochs == p.low_res_epochs
    assert later.total_steps == 60 + int((200 - 80) * PLAN_FRACTION // 3.0)


def test_when_nothing_fits_any_more_the_plan_ends_now():
    p = plan()
    over = replan_after_epoch(p, spent_s=199.9, done_steps=60, measured_size=32, measured_step_s=3.0,
                              low_fraction=0.5)
    assert over.total_steps == 60


def test_a_budget_too_small_for_one_step_names_the_smallest_that_fits():
    with pytest.raises(UsageError, match=r"--budget 0\.01 min is too small: one training step takes 2\.00 s here\. "
                                         r"The smallest budget that fits one step is --budget 0\.04 \(minutes\)"):
        check_budget_fits(0.6, 0.0, 2.0)
    check_budget_fits(3.0, 0.0, 2.0)  # fits: no error


def test_the_learning_rate_follows_progress_with_warmup_and_cosine():
    from crlf.config import load_config

    cfg = load_config(None, {"optim": {"lr": 1.0, "schedule": "cosine", "warmup_epochs": 1}})
    assert learning_rate_at_progress(cfg, 0.0, 0.05, 10) == pytest.approx(0.5)  # warm-up: the first tenth
    assert learning_rate_at_progress(cfg, 0.1, 0.11, 10) == pytest.approx(1.0)
    assert learning_rate_at_progress(cfg, 0.55, 0.56, 10) == pytest.approx(0.5)  # half-way through the decay
    assert learning_rate_at_progress(cfg, 1.0, 1.0, 10) == pytest.approx(0.0, abs=1e-12)


# -- the loop's wiring, with injected step times -------------------------------------------------------------

STEP_S = {16: 0.1, 32: 0.2}  # injected seconds per step at 16 and 32 px


def fake_measure(seconds: dict[int, float]):
    calls = []

    def measure(cfg, device, settings, sizes, batch_size, num_images):
        calls.append([s.name for s in settings])
        return {s.name: {v: seconds[v] for v in sizes} for s in settings}

    measure.calls = calls
    return measure


class FakeClock:
    """The loop's clock, advancing 0.05 s at each reading: a step (two readings) takes 0.05 s, and the budget's
    accounting is the same on every machine."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 0.05
        return self.now


def pretrain_with(argv: list[str], hooks: TrainingHooks) -> Path:
    """``crlf pretrain ARGV`` with ``hooks`` (the clock, injected faults) handed to the loop: the command line's
    own parsing and config, then ``pretrain``; errors are raised rather than turned into exit codes."""
    from crlf.training.pretrain import pretrain

    args = build_parser().parse_args(["pretrain", *argv])
    overrides = train_overrides(args)
    return pretrain(load_config(args.config, overrides), args.out, resume=args.resume, progress=not args.quiet,
                    cli_overrides=overrides, hooks=hooks)


@pytest.fixture
def budget_run(tmp_path, monkeypatch):
    monkeypatch.setenv("CRLF_CACHE_DIR", str(tmp_path / "probe-cache"))
    clock = FakeClock()  # one clock for the test, across a run and its resumption
    data = make_image_folder(tmp_path / "images", train_per_class=4, test_per_class=2)  # 12 images

    def flags(out, *extra, seconds=None):
        if seconds is not None:
            monkeypatch.setattr(probe, "measure_step_times", fake_measure(seconds))
        return ["--config", str(REPO / "configs" / "fast-cpu.yaml"), "--data", str(data), "--out", str(tmp_path / out),
                "--batch-size", "4", "--device", "cpu", "--threads", "1", "--precision", "fp32", "--quiet", *extra]

    def run(out, *extra, seconds=None, **faults):
        """The run on the fake clock, with ``faults`` (TrainingHooks' fields) injected."""
        return pretrain_with(flags(out, *extra, seconds=seconds), TrainingHooks(clock=clock, **faults))

    def cli(out, *extra, seconds=None):
        """``crlf pretrain`` through crlf.cli.main, for what fails before the first step; its exit code."""
        return main(["pretrain", *flags(out, *extra, seconds=seconds)])

    run.clock, run.cli = clock, cli
    return run, tmp_path


def test_a_budget_run_trains_the_planned_steps_and_records_the_plan(budget_run):
    run, tmp = budget_run
    # 3 steps per epoch; 0.1 s per step at 16 px, 0.2 s at 32 px (injected); 1.1 s budget: 1.08 s to plan.
    # fast-cpu's share 8/10 at low resolution: 2 low epochs (0.6 s) + 2 full steps (0.4 s) = 8 steps.
    assert run("r", "--budget", str(1.1 / 60), seconds=STEP_S) == tmp / "r"
    record = json.loads((tmp / "r" / "budget_plan.json").read_text())
    assert record["first_plan"] == "budget 0.0183333 min: 2 epochs at 16 px + 0.67 epochs at 32 px, est. 0.0 min (8 steps)"
    steps = np.load(tmp / "r" / "step_losses.npy")
    assert len(steps) == record["plan"]["total_steps"]
    history = [json.loads(line) for line in (tmp / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [h["view_size"] for h in history][:2] == [16, 16] and history[-1]["view_size"] == 32
    assert all("budget_spent_s" in h for h in history)
    assert record["spent_s"] <= 1.1  # the fake clock's time: the plan and its guard kept the run within budget
    meta = json.loads((tmp / "r" / "config.json").read_text())
    assert meta["budget"]["first_plan"] == record["first_plan"] and meta["precision_probe"]["rule"] == "explicit"
    card = (tmp / "r" / "README.md").read_text()
    assert "| budget | 0.0183333 min of pretraining" in card and record["first_plan"] in card


def test_without_a_budget_nothing_is_timed_and_epochs_rule(budget_run):
    run, tmp = budget_run
    measure = fake_measure({16: 1.0, 32: 1.0})
    probe_fn = probe.measure_step_times
    try:
        probe.measure_step_times = measure
        assert run("r", "--epochs", "2") == tmp / "r"
    finally:
        probe.measure_step_times = probe_fn
    assert measure.calls == [] and not (tmp / "r" / "budget_plan.json").exists()
    assert len(np.load(tmp / "r" / "step_losses.npy")) == 6


def test_a_resumed_budget_run_keeps_its_plan_and_counts_the_time_spent(budget_run, monkeypatch):
    run, tmp = budget_run
    with pytest.raises(Interrupted) as stopped:  # a SIGINT mid-way: global step 5 of 8
        run("r", "--budget", str(1.1 / 60), "--checkpoint-every-steps", "1", seconds=STEP_S,
            signal_at_step=(4, signal.SIGINT))
    assert stopped.value.exit_code == 130
    before = json.loads((tmp / "r" / "budget_plan.json").read_text())
    import torch

    progress = torch.load(tmp / "r" / "checkpoint.pt", weights_only=True)["progress"]
    assert progress["budget_plan"]["first_plan"] == before["first_plan"] and progress["budget_spent_s"] > 0
    measure = fake_measure(STEP_S)
    monkeypatch.setattr(probe, "measure_step_times", measure)
    assert pretrain_with(["--out", str(tmp / "r"), "--resume", "--quiet"], TrainingHooks(clock=run.clock)) == tmp / "r"
    assert measure.calls == []  # the plan's own step times: nothing timed again
    after = json.loads((tmp / "r" / "budget_plan.json").read_text())
    assert after["first_plan"] == before["first_plan"]
    assert after["spent_s"] >= progress["budget_spent_s"]
    assert after["plan"]["replans"] >= 1
    assert len(np.load(tmp / "r" / "step_losses.npy")) == after["plan"]["total_steps"]


def test_a_budget_too_small_for_one_step_is_a_usage_error(budget_run, capsys):
    run, tmp = budget_run
    assert run.cli("r", "--budget", "0.01", seconds={16: 2.0, 32: 4.0}) == 2
    err = capsys.readouterr().err
    assert "--budget 0.01 min is too small" in err and "--budget 0.04 (minutes)" in err
    assert not (tmp / "r" / "encoder.safetensors").exists()


@pytest.mark.parametrize("value", ["0", "-5", "abc"])
def test_a_budget_must_be_a_positive_number(budget_run, value, capsys):
    run, _ = budget_run
    assert run.cli("r", f"--set=train.budget_minutes={value}") == 2
    assert "train.budget_minutes" in capsys.readouterr().err


def test_the_schedules_reach_their_end_with_the_budget(budget_run):
    run, tmp = budget_run
    assert run("r", "--budget", str(1.1 / 60), "--set", "optim.schedule=cosine", seconds=STEP_S) == tmp / "r"
    history = [json.loads(line) for line in (tmp / "r" / "metrics.jsonl").read_text().splitlines()]
    # the last step's lr is the cosine near progress 1; following fast-cpu's 10 epochs instead, it would
    # still be above 0.8 of the base lr after these 3 epochs
    assert history[-1]["lr"] < 0.25 * 3e-4
    assert math.isfinite(history[-1]["loss"])


def test_crlf_run_with_a_budget_reports_the_time_spent_apart_from_evaluation(budget_run, capsys, monkeypatch):
    # The whole command through crlf.cli.main, on the real clock: what is asserted holds for any time spent.
    run, tmp = budget_run
    monkeypatch.setattr(probe, "measure_step_times", fake_measure(STEP_S))
    data = tmp / "images"
    assert main(["run", "--config", str(REPO / "configs" / "fast-cpu.yaml"), "--data", str(data), "--out",
                 str(tmp / "r"), "--batch-size", "4", "--device", "cpu", "--threads", "1", "--precision", "fp32",
                 "--quiet", "--budget", str(1.1 / 60)]) == 0
    out = capsys.readouterr().out
    spent = json.loads((tmp / "r" / "budget_plan.json").read_text())["spent_s"]
    assert f"pretraining ({spent / 60:.1f} min of a 0.0183333-min budget, precision probe and checkpoints included)" in out
    assert "s evaluation: linear top-1 " in out
