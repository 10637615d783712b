"""data.image_size: auto: the survey of image headers, the choice rule (by epochs, by device, under a budget
with injected step costs), the recipes' pixel values at the chosen side, the notice, and the record."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from crlf.cli import main
from crlf.config import Config, apply_overrides, load_config
from crlf.data.survey import ImageSurvey, survey_source
from crlf.errors import UsageError
from crlf.training.budget_planner import plan_largest_side
from crlf.training.progress import Progress
from crlf.training.resolution import (
    MIN_EPOCHS,
    candidate_sides,
    recipe_at_side,
    resolve_image_size,
)

from conftest import REPO, make_archive

FAST_CPU = REPO / "configs" / "fast-cpu.yaml"
CPU = torch.device("cpu")


def write_images(folder: Path, sizes: list[tuple[int, int]], classes: int = 2) -> Path:
    """``folder/class<k>/NNN.png`` of the given (width, height), round-robin over the classes."""
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate(sizes):
        target = folder / f"class{i % classes}"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(target / f"{i:03d}.png")
    return folder


def photos_survey(native: int = 120, files: int = 600) -> ImageSurvey:
    return ImageSurvey("photos", files, 256, round(native * 4 / 3), native, native)


# -- the survey ---------------------------------------------------------------------------------------------


def test_survey_reads_the_median_shorter_side_of_a_seeded_sample(tmp_path):
    sizes = [(160, 120)] * 7 + [(40, 300)] * 2 + [(64, 64)] * 2  # shorter sides: 120 x7, 40 x2, 64 x2
    folder = write_images(tmp_path / "photos", sizes)
    found = survey_source(str(folder))
    assert (found.files, found.sampled, found.native_side) == (11, 11, 120)
    assert (found.median_width, found.median_height) == (160, 120)
    few = survey_source(str(folder), sample=5, seed=3)
    assert few.sampled == 5 and few == survey_source(str(folder), sample=5, seed=3)  # seeded: the same files
    samples = {survey_source(str(folder), sample=3, seed=s).native_side for s in range(12)}
    assert len(samples) > 1  # another seed, another sample


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_an_archive_gives_the_same_survey_as_its_folder(tmp_path, suffix):
    folder = write_images(tmp_path / "photos", [(96, 72)] * 6 + [(50, 50)] * 5)
    archive = make_archive(folder, tmp_path / f"photos{suffix}", top="photos")
    a, b = survey_source(str(folder), sample=4), survey_source(str(archive), sample=4)
    assert (a.files, a.sampled) == (b.files, b.sampled) == (11, 4)  # (the archive's paths carry 'photos/')
    full_a, full_b = survey_source(str(folder)), survey_source(str(archive))
    assert full_a.record() | {"name": ""} == full_b.record() | {"name": ""}
    assert full_a.native_side == 72


def test_unreadable_headers_are_counted_not_fatal_and_published_sets_are_not_read(tmp_path):
    folder = write_images(tmp_path / "photos", [(80, 80)] * 3)
    (folder / "class0" / "broken.jpg").write_bytes(b"not an image")
    found = survey_source(str(folder))
    assert (found.native_side, found.unreadable, found.files) == (80, 1, 4)
    assert survey_source("cifar10").native_side == 32 and survey_source("cifar10").sampled == 0
    assert survey_source("stl10").native_side == 96
    assert survey_source(str(tmp_path / "missing")) is None


# -- the rule -----------------------------------------------------------------------------------------------


def test_candidate_sides_never_upsample_and_keep_to_the_limit():
    assert candidate_sides(120, 64) == [32, 48, 64]
    assert candidate_sides(120, 128) == [32, 48, 64, 96]
    assert candidate_sides(28, 224) == [28]  # a folder of 28-px images trains at 28 px
    assert candidate_sides(4, 224) == [8]
    assert candidate_sides(33, 224) == [32]
    assert candidate_sides(1024, 224)[-1] == 224


def test_the_recipes_pixel_values_scale_from_32_px():
    fast = load_config(FAST_CPU)
    assert recipe_at_side(fast, 32) == replace(fast, data=replace(fast.data, image_size=32))  # CIFAR: unchanged
    at64 = recipe_at_side(fast, 64)
    assert (at64.data.image_size, at64.train.low_res_size, at64.augment.blur_kernel) == (64, 32, 7)
    assert recipe_at_side(fast, 28).train.low_res_size == 14
    dino = recipe_at_side(load_config(REPO / "configs" / "methods" / "dino-vit.yaml"), 96)
    assert [c.size for c in dino.augment.crops] == [None, 48]  # the local crops: 16 of 32 -> 48 of 96


def test_budget_picks_the_largest_side_that_keeps_the_epoch_floor():
    sides = [32, 48, 64, 96, 128]
    cost = {s: (0.1 * (s / 32) ** 2 / 4, 0.1 * (s / 32) ** 2) for s in sides}  # low views: half the side
    steps_per_epoch = 10

    def epochs_at(side, budget_s):
        return plan_largest_side(budget_s, [side], steps_per_epoch, cost.__getitem__, lambda s: s // 2,
                                 low_fraction=0.8, min_epochs=0)[1].epochs

    # a budget in which 64 px keeps the floor and 96 px does not (an epoch: 1.6 s at 64 px, 3.6 s at 96)
    budget = 2.5 * MIN_EPOCHS
    assert epochs_at(64, budget) >= 1.2 * MIN_EPOCHS and epochs_at(96, budget) <= 0.8 * MIN_EPOCHS
    side, plan = plan_largest_side(budget, sides, steps_per_epoch, cost.__getitem__, lambda s: s // 2,
                                   low_fraction=0.8, min_epochs=MIN_EPOCHS)
    assert side == 64 and plan.full_size == 64 and plan.low_size == 32 and plan.epochs >= MIN_EPOCHS
    big, _ = plan_largest_side(100 * budget, sides, steps_per_epoch, cost.__getitem__, lambda s: s // 2,
                               low_fraction=0.8, min_epochs=MIN_EPOCHS)
    small, poor = plan_largest_side(budget / 50, sides, steps_per_epoch, cost.__getitem__, lambda s: s // 2,
                                    low_fraction=0.8, min_epochs=MIN_EPOCHS)
    assert big == 128 and small == 32 and poor.epochs < MIN_EPOCHS


# -- the choice as a run makes it ----------------------------------------------------------------------------


def fast_cpu(source: str, **train) -> Config:
    return apply_overrides(load_config(FAST_CPU), {"data": {"source": source}, "train": train})


def resolve(cfg, found, **kw):
    lines, state = [], Progress()
    resolved = resolve_image_size(cfg, CPU, state, num_images=lambda s: s.files, log=lines.append,
                                  survey=lambda source, seed: found, **kw)
    return resolved, lines, state


def test_by_epochs_a_cpu_trains_photos_at_64_px_and_says_why(tmp_path):
    resolved, lines, state = resolve(fast_cpu("photos"), photos_survey(120))
    assert resolved.cfg.data.image_size == 64 and resolved.cfg.train.low_res_size == 32 and resolved.probe is None
    assert len(lines) == 1
    assert lines[0].startswith("image size auto: photos: median 160x120 (256 of 600 headers); training at 64 px, "
                               "32 px for the first 80%")
    assert "without --budget" in lines[0]
    assert state.resolution["side"] == 64 and state.resolution["survey"]["native_side"] == 120
    gpu = resolve_image_size(fast_cpu("photos"), torch.device("cuda"), Progress(), num_images=lambda s: s.files,
                             log=None, survey=lambda source, seed: photos_survey(120))
    assert gpu.cfg.data.image_size == 96 and gpu.choice.reason == "the largest side the images hold"  # 128 > 120
    small, _, _ = resolve(fast_cpu("photos"), photos_survey(48))
    assert small.cfg.data.image_size == 48 and "the largest side the images hold" in small.choice.reason
    tiny, _, _ = resolve(fast_cpu("digits"), ImageSurvey("digits", 100, 100, 28, 28, 28))
    assert tiny.cfg.data.image_size == 28 and "never upsampled" in tiny.choice.reason


def test_published_datasets_keep_their_own_size():
    for source, side in (("cifar10", 32), ("stl10", 96), ("tinyimagenet", 64)):
        resolved, lines, _ = resolve(fast_cpu(source), survey_source(source))
        assert resolved.cfg.data.image_size == side and "published dataset's own size" in lines[0]
    cifar, _, _ = resolve(fast_cpu("cifar10"), survey_source("cifar10"))
    assert cifar.cfg == recipe_at_side(fast_cpu("cifar10"), 32)  # today's fast-cpu recipe, unchanged


def test_an_explicit_size_is_kept_and_one_far_below_the_images_gets_a_notice():
    explicit = apply_overrides(fast_cpu("photos"), {"data": {"image_size": 32}})
    resolved, lines, state = resolve(explicit, photos_survey(512))
    assert resolved.cfg is explicit and resolved.choice is None and state.resolution is None
    assert len(lines) == 1 and lines[0].startswith("note: data.image_size=32 is at most half the images' size")
    _, quiet, _ = resolve(explicit, photos_survey(48))
    assert quiet == []  # 32 of 48 px: no notice


def test_under_a_budget_the_side_comes_from_measured_step_costs(tmp_path, monkeypatch):
    calls = []

    def measure(cfg, device, settings, view_sizes, batch_size, num_images):  # seconds per step: area x cost
        calls.append((cfg.data.image_size, tuple(view_sizes), [s.name for s in settings]))
        return {s.name: {v: per_px * (v / 32) ** 2 for v in view_sizes} for s in settings}

    found = photos_survey(native=240, files=2560)  # 10 steps an epoch at batch 256
    per_px = 0.05
    # an epoch (8 of 10 at low resolution, half the side) takes 0.8 s at 64 px, 1.8 s at 96 px: a budget of
    # 1.3 x MIN_EPOCHS seconds gives 64 px 1.6 x the floor, 96 px 0.71 x
    cfg = fast_cpu("photos", budget_minutes=1.3 * MIN_EPOCHS / 60, precision="fp32")
    resolved, lines, state = resolve(cfg, found, measure=measure)
    assert resolved.cfg.data.image_size == 64 and resolved.cfg.train.low_res_size == 32
    assert calls[0][:2] == (32, (16, 32))  # the smallest side first (the precision probe's timing)
    assert calls[-1][:2] == (64, (32, 64))  # then the chosen side's own steps, for the plan
    assert resolved.probe.step_seconds(64) == pytest.approx(per_px * 4)
    assert f"keeps {MIN_EPOCHS}+ epochs" in lines[-1]
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "other-machine"))  # not the step times cached above
    per_px = 0.005  # ten times faster steps: 128 px (the CPU's budget limit) keeps the floor
    calls.clear()
    fast, _, _ = resolve(cfg, found, measure=measure)
    assert fast.cfg.data.image_size == 128 and fast.probe.step_seconds(128) == pytest.approx(per_px * 16)
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "slow-machine"))
    per_px = 5.0  # slow steps: nothing keeps the floor, the smallest side is trained and the line says so
    slow, lines, _ = resolve(cfg, found, measure=measure)
    assert slow.cfg.data.image_size == 32 and "the smallest side" in lines[-1]


def test_image_size_values_are_checked():
    with pytest.raises(UsageError, match="data.image_size' must be an integer or auto"):
        apply_overrides(Config(), {"data": {"image_size": "big"}})
    with pytest.raises(UsageError, match="data.image_size must be >= 8 pixels or auto"):
        apply_overrides(Config(), {"data": {"image_size": 4}})
    assert apply_overrides(Config(), {"data": {"image_size": "auto"}}).data.image_size == "auto"


def test_a_run_on_photos_records_its_side_everywhere(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))
    photos = write_images(tmp_path / "photos", [(80, 60)] * 24, classes=2)
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(FAST_CPU), "--data", str(photos), "--out", str(run), "--epochs", "1",
                 "--batch-size", "8", "--device", "cpu", "--threads", "1", "--precision", "fp32",
                 "--set", "model.arch=resnet18"]) == 0
    out = capsys.readouterr()
    assert "image size auto: photos: median 80x60 (24 of 24 headers); training at 48 px" in out.out + out.err
    meta = json.loads((run / "config.json").read_text())
    assert meta["image_size"] == 48 and meta["resolution"]["side"] == 48
    assert meta["resolution"]["survey"]["native_side"] == 60
    assert "image_size: 48" in (run / "config.yaml").read_text()  # evaluation, embed, export follow it
    assert "| image size | photos: median 80x60" in (run / "README.md").read_text()
