"""``data.image_size: auto``: the training resolution chosen from the images, the device and the budget.

The rule, in order (each step is said in the one line the run prints, and recorded in config.json, the
model card and the report):

1. The images' native side: the median shorter side of a seeded sample of headers
   (:mod:`crlf.data.survey`); a published dataset's own size (CIFAR 32, STL-10 96, Tiny-ImageNet 64),
   which it keeps.
2. The candidate sides: the steps of :data:`LADDER` up to the native side (an image is never upsampled:
   a folder of 28-px images trains at 28 px), and up to the device's limit.
3. By epochs (no ``--budget``): the largest candidate within :data:`EPOCH_LIMITS` for the device. The
   user chose the epochs, not the time, so the limit keeps a CPU run's step cost within ~4x of the
   32-px recipes'.
4. Under ``--budget``: the budget planner's choice (:func:`crlf.training.budget_planner.plan_largest_side`):
   the largest candidate within :data:`BUDGET_LIMITS` whose plan still trains :data:`MIN_EPOCHS` epochs (5),
   from step costs measured at the smallest candidate (the precision probe's timing, which a budget run
   does anyway) and scaled by the views' area. The chosen side's steps are then timed for the plan itself.

The recipes' pixel values (``train.low_res_size``, the crops' explicit sizes, ``augment.blur_kernel``) are
written for 32-px images, CIFAR's, which every shipped recipe was tuned on; with ``auto`` they scale with
the chosen side (:func:`recipe_at_side`), and a ViT's ``model.patch_size: 0`` is a fraction of the side
already. An explicit ``data.image_size`` is never changed; one at most half the native side gets a notice.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from crlf.config import Config
from crlf.data.survey import PUBLISHED_SIDES, ImageSurvey, survey_source
from crlf.training import distributed
from crlf.training.budget_planner import plan_largest_side
from crlf.training.precision import ProbeResult, resolve_precision
from crlf.training.progress import Progress
from crlf.training.schedule import low_res_fraction, run_view_sizes

AUTO = "auto"
RECIPE_SIDE = 32  # the side the recipes' pixel values are written for
LADDER = (32, 48, 64, 96, 128, 160, 192, 224)  # candidate sides above 32 px (ResNet strides: multiples of 16)
# The largest side by device. Without a budget, a CPU keeps within 4x the pixels of the 32-px recipes.
EPOCH_LIMITS = {"cpu": 64, "mps": 128, "cuda": 224}
BUDGET_LIMITS = {"cpu": 128, "mps": 160, "cuda": 224}
# Under a budget: the largest side whose plan still has this many (estimated) epochs. Chosen on one set and
# reported on another (BENCHMARKS.md, "data.image_size: auto"): on 3x3 mosaics of CIFAR-10 tiles (96 px),
# 4 minutes of fast-cpu on this CPU trained best at 64 px (est. 8.0 epochs) against 32 (est. 32) and 96
# (est. 3.6); 5 lies between 8.0 and 3.6 (their geometric mean, 5.4, rounded down). A first prior of 20
# kept the 2x2 mosaics at 32 px, 6 points below 64.
MIN_EPOCHS = 5
NOTICE_SHARE = 0.5  # an explicit side at most this share of the native side gets a notice


@dataclass(frozen=True)
class ResolutionChoice:
    """The side chosen (and its low-resolution side, 0 if none) and why."""

    side: int
    low_side: int
    low_share: float  # share of epochs at low_side (the recipe's)
    survey: ImageSurvey
    reason: str

    def describe(self) -> str:
        """e.g. ``photos: median 160x120 (256 of 600 headers); training at 64 px, 32 px for the first 80 %:
        the largest side for a CPU without --budget``."""
        low = (f", {self.low_side} px for the first {self.low_share:.0%}" if self.low_side and self.low_share
               else "")
        return f"image size auto: {self.survey.describe()}; training at {self.side} px{low}: {self.reason}"

    def record(self) -> dict:
        return {"rule": AUTO, "side": self.side, "low_side": self.low_side, "low_share": round(self.low_share, 3),
                "reason": self.reason, "survey": self.survey.record(), "description": self.describe()}


def candidate_sides(native: int, limit: int) -> list[int]:
    """The sides to choose from, ascending: the ladder up to the native side and the limit; the native side
    itself when it is at most 32 px (never upsampled, never below 8)."""
    if native <= LADDER[0]:
        return [max(8, native)]
    return [s for s in LADDER if s <= min(native, limit)] or [LADDER[0]]


def scale_pixels(value: int, side: int, odd: bool = False) -> int:
    """A recipe's pixel value written for 32-px images, at ``side`` px (odd kept odd: a blur kernel)."""
    scaled = value * side / RECIPE_SIDE
    if odd:
        return max(1, 2 * int((scaled - 1) / 2 + 0.5) + 1)
    return max(1, int(scaled + 0.5))


def recipe_at_side(cfg: Config, side: int) -> Config:
    """``cfg`` with ``data.image_size = side`` and its pixel values scaled from 32 px (unchanged at 32)."""
    t, a = cfg.train, cfg.augment
    low = min(side, max(8, scale_pixels(t.low_res_size, side))) if t.low_res_size else 0
    crops = tuple(c if c.size is None else replace(c, size=max(8, scale_pixels(c.size, side))) for c in a.crops)
    blur = a.blur_kernel if a.blur_kernel_fraction > 0 else scale_pixels(a.blur_kernel, side, odd=True)
    return replace(cfg, data=replace(cfg.data, image_size=side), train=replace(t, low_res_size=low),
                   augment=replace(a, crops=crops, blur_kernel=blur))


@dataclass(frozen=True)
class ResolvedSize:
    """What :func:`resolve_image_size` hands the run: the config at its side, the choice (None: explicit),
    and under a budget the precision probe that measured the steps (None otherwise)."""

    cfg: Config
    choice: ResolutionChoice | None
    probe: ProbeResult | None = None


def resolve_image_size(cfg: Config, device: torch.device, state: Progress, num_images: Callable[[ImageSurvey], int],
                       log: Callable[[str], None] | None, survey: Callable[..., ImageSurvey | None] = survey_source,
                       measure: Callable | None = None) -> ResolvedSize:
    """The run's config with ``data.image_size`` an integer. ``num_images(survey)``: how many training
    images the run will have (for a budget's epochs). ``survey`` and ``measure`` are injectable (tests)."""
    d = cfg.data
    found = distributed.decided_on_main(lambda: survey(d.source, seed=cfg.train.seed))
    if d.image_size != AUTO:
        if found is not None and d.image_size <= NOTICE_SHARE * found.native_side and log:
            log(f"note: data.image_size={d.image_size} is at most half the images' size ({found.describe()}); "
                f"detail above {d.image_size} px is thrown away. data.image_size: auto chooses from the images.")
        return ResolvedSize(cfg, None)
    if found is None:  # nothing readable: the decode names what is wrong with the source
        return ResolvedSize(recipe_at_side(cfg, RECIPE_SIDE), None)
    if d.source in PUBLISHED_SIDES or found.sampled == 0:
        side, reason, probe = found.native_side, "the published dataset's own size", None
    else:
        sides = candidate_sides(found.native_side, _limit(BUDGET_LIMITS if cfg.train.budget_minutes else EPOCH_LIMITS,
                                                          device))
        if len(sides) == 1:
            side, probe = sides[0], None
            reason = ("the images' own size (never upsampled)" if found.native_side <= LADDER[0]
                      else "the largest side the images hold")
        elif not cfg.train.budget_minutes:
            side, probe = sides[-1], None
            reason = (f"the largest side for {_device_name(device)} without --budget ({side} px)"
                      if side >= _limit(EPOCH_LIMITS, device) else "the largest side the images hold")
        else:
            side, probe, reason = _side_for_budget(cfg, device, sides, num_images(found), log, measure)
    run_cfg = recipe_at_side(cfg, side)
    run_cfg.validate()
    share = low_res_fraction(run_cfg)  # the recipe's share of low-resolution epochs, as the schedule keeps it
    choice = ResolutionChoice(side, run_view_sizes(run_cfg)[0] if share else 0, share, found, reason)
    state.resolution = choice.record()  # the checkpoint keeps it; config.json and the model card show it
    if log:
        log(choice.describe())
    return ResolvedSize(run_cfg, choice, probe)


def _limit(limits: dict[str, int], device: torch.device) -> int:
    return limits.get(device.type, limits["cpu"])


def _device_name(device: torch.device) -> str:
    return {"cpu": "a CPU", "cuda": "a GPU", "mps": "Apple's GPU"}.get(device.type, device.type)


def _side_for_budget(cfg: Config, device: torch.device, sides: list[int], images: int,
                     log: Callable[[str], None] | None, measure: Callable | None
                     ) -> tuple[int, ProbeResult, str]:
    """The planner's side under ``--budget``, and the precision probe with the chosen side's step times."""
    batch = cfg.train.batch_size // distributed.world_size()
    steps_per_epoch = max(1, images // cfg.train.batch_size)
    smallest = recipe_at_side(cfg, sides[0])
    ref_sizes = run_view_sizes(smallest)
    probe = resolve_precision(smallest, device, ref_sizes, need_timings=True, batch_size=batch, num_images=images,
                              log=log, measure=measure)
    low_ref, full_ref = probe.step_seconds(ref_sizes[0]), probe.step_seconds(ref_sizes[-1])

    def estimated(side: int) -> tuple[float, float]:  # the views' area scales the measured cost
        area = (side / sides[0]) ** 2
        return low_ref * area, full_ref * area

    def low_side(side: int) -> int:
        return run_view_sizes(recipe_at_side(cfg, side))[0]

    side, plan = plan_largest_side(cfg.train.budget_minutes * 60, sides, steps_per_epoch, estimated, low_side,
                                   low_fraction=low_res_fraction(smallest), min_epochs=MIN_EPOCHS, spent_s=probe.probe_s)
    reason = (f"the largest side whose {cfg.train.budget_minutes:g}-minute plan keeps {MIN_EPOCHS}+ epochs "
              f"(est. {plan.epochs:.0f} epochs at {side} px)" if plan.epochs >= MIN_EPOCHS else
              f"the smallest side: no side up to {sides[-1]} px keeps {MIN_EPOCHS} epochs in "
              f"{cfg.train.budget_minutes:g} minutes (est. {plan.epochs:.1f})")
    if side == sides[0]:
        return side, probe, reason
    # The plan itself runs on measured step times: the chosen setting, timed at the chosen side's views.
    chosen = recipe_at_side(cfg, side)
    chosen = replace(chosen, train=replace(chosen.train, precision=probe.setting.precision,
                                           channels_last=probe.setting.channels_last))
    timed = resolve_precision(chosen, device, run_view_sizes(chosen), need_timings=True, batch_size=batch,
                              num_images=images, log=None, measure=measure)
    name = probe.setting.name
    timings = {name: {**probe.timings[name], **timed.timings[name]}}
    return side, dataclasses.replace(probe, timings=timings, probe_s=probe.probe_s + timed.probe_s), reason


def fixed_side(cfg: Config, side: int = RECIPE_SIDE) -> Config:
    """``cfg`` at ``side`` px when its size is auto (code that trains or decodes outside a run, such as the
    benchmarks on CIFAR-10, whose images are 32 px); an explicit size unchanged."""
    return recipe_at_side(cfg, side) if cfg.data.image_size == AUTO else cfg
