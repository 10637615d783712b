"""precision: auto: the probe picks the fastest measured setting, never overrides an explicit one, and caches
its answer per machine (a corrupt or foreign cache is ignored with a warning). Timings are injected."""

from __future__ import annotations

import json

import pytest
import torch

from crlf.cli import main
from crlf.config import load_config
from crlf.training import precision as probe
from crlf.training.precision import Setting, cache_file, measure_step_times, resolve_precision
from crlf.training.resolution import fixed_side

from conftest import REPO, make_image_folder

CPU = torch.device("cpu")


def injected(seconds: dict[str, float]):
    """A measuring function answering ``seconds[setting name]`` at every size, recording what it was asked."""
    calls = []

    def measure(cfg, device, settings, sizes, batch_size, num_images):
        calls.append(sorted(s.name for s in settings))
        return {s.name: {v: seconds[s.name] for v in sizes} for s in settings}

    measure.calls = calls
    return measure


BF16_FASTEST = {"fp32": 0.5, "fp32 + channels_last": 0.45, "bf16": 0.4, "bf16 + channels_last": 0.35}
FP32_FASTEST = {"fp32": 0.5, "fp32 + channels_last": 0.45, "bf16": 1.5, "bf16 + channels_last": 1.6}


@pytest.fixture(autouse=True)
def probe_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("CRLF_CACHE_DIR", str(tmp_path / "probe"))


def resolve(cfg, measure, need_timings=False, sizes=(16, 32), planned_steps=None, log=None):
    return resolve_precision(cfg, CPU, list(sizes), need_timings=need_timings, batch_size=256, num_images=50000,
                             log=log, measure=measure, planned_steps=planned_steps)


def test_a_run_too_short_for_timing_to_pay_keeps_fp32_untimed_and_says_why(monkeypatch):
    monkeypatch.setattr(probe, "cpu_has_bf16", lambda: True)
    cfg = load_config(REPO / "configs" / "fast-cpu.yaml", {"train": {"precision": "auto"}})  # channels_last
    # 4 settings x 2 sizes x (1 warm-up + 2 timed) rounds = 24 steps of timing at the least
    lines, measure = [], injected(BF16_FASTEST)
    short = resolve(cfg, measure, planned_steps=479, log=lines.append)  # 24 > 5 % of 479
    assert short.setting == Setting("fp32", True) and short.rule == "not timed: a short run" and measure.calls == []
    assert lines == ["precision auto: fp32 + channels_last, not timed: timing 4 settings takes at least 24 steps, "
                     "more than 5% of this run's 479"]
    assert resolve(cfg, measure, planned_steps=480).setting == Setting("bf16", True)  # 24 = 5 % of 480: timed
    assert len(measure.calls) == 1
    # now cached for this machine: free, so even a short run uses the answer
    assert resolve(cfg, measure, planned_steps=3).rule == "cached" and len(measure.calls) == 1


def test_a_budget_times_its_steps_however_short(monkeypatch):
    monkeypatch.setattr(probe, "cpu_has_bf16", lambda: True)
    cfg = load_config(REPO / "configs" / "fast-cpu.yaml", {"train": {"precision": "auto"}})
    measure = injected(BF16_FASTEST)
    assert resolve(cfg, measure, need_timings=True, planned_steps=3).rule == "measured" and measure.calls


@pytest.mark.parametrize("timings, expected", [(BF16_FASTEST, Setting("bf16", True)),
                                               (FP32_FASTEST, Setting("fp32", True))])
def test_auto_picks_the_fastest_measured_setting(monkeypatch, timings, expected):
    monkeypatch.setattr(probe, "cpu_has_bf16", lambda: True)
    measure = injected(timings)
    result = resolve(load_config(REPO / "configs" / "fast-cpu.yaml", {"train": {"precision": "auto"}}), measure)
    assert result.setting == expected and result.rule == "measured"
    assert measure.calls == [sorted(timings)]  # all four settings, timed once
    assert result.record()["seconds_per_step"][expected.name] == {"16": timings[expected.name],
                                                                   "32": timings[expected.name]}


def test_a_cpu_without_bf16_times_only_fp32(monkeypatch):
    monkeypatch.setattr(probe, "cpu_has_bf16", lambda: False)
    measure = injected(BF16_FASTEST)
    result = resolve(load_config(None, {"train": {"precision": "auto"}}), measure)
    assert measure.calls == [["fp32", "fp32 + channels_last"]]
    assert result.setting == Setting("fp32", True)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_an_explicit_precision_is_never_overridden(precision):
    measure = injected(BF16_FASTEST if precision == "fp32" else FP32_FASTEST)
    cfg = load_config(None, {"train": {"precision": precision}})
    assert resolve(cfg, measure) is None and measure.calls == []  # nothing to decide, nothing timed
    timed = resolve(cfg, measure, need_timings=True)  # a budget needs its step times: that setting alone
    assert timed.setting == Setting(precision, False) and timed.rule == "explicit"
    assert measure.calls == [[precision]]


def test_the_answer_is_cached_per_machine_and_run_shape(monkeypatch):
    monkeypatch.setattr(probe, "cpu_has_bf16", lambda: True)
    cfg = load_config(None, {"train": {"precision": "auto"}})
    first = injected(BF16_FASTEST)
    resolve(cfg, first)
    again = injected(FP32_FASTEST)
    result = resolve(cfg, again)
    assert again.calls == [] and result.rule == "cached" and result.setting == Setting("bf16", True)
    # another batch size is another measurement
    resolve_precision(cfg, CPU, [16, 32], need_timings=False, batch_size=128, num_images=50000, log=None,
                      measure=again)
    assert len(again.calls) == 1
    entries = json.loads(cache_file().read_text())["entries"]
    assert sorted(key.split("|")[-2:] for key in entries) == [
        ["view=16", "batch=128"], ["view=16", "batch=256"], ["view=32", "batch=128"], ["view=32", "batch=256"]]


@pytest.mark.parametrize("content, why", [("{not json", "corrupt"), ('{"entries": []}', "not a CRLF probe cache"),
                                          ('["a list"]', "not a CRLF probe cache")])
def test_a_corrupt_or_foreign_cache_is_ignored_with_a_warning(monkeypatch, content, why):
    monkeypatch.setattr(probe, "cpu_has_bf16", lambda: True)
    path = cache_file()
    path.parent.mkdir(parents=True)
    path.write_text(content)
    measure = injected(BF16_FASTEST)
    with pytest.warns(UserWarning, match=why):
        result = resolve(load_config(None, {"train": {"precision": "auto"}}), measure)
    assert result.setting == Setting("bf16", True) and len(measure.calls) == 1
    assert json.loads(path.read_text())["format"] == probe.CACHE_FORMAT  # rewritten as a good cache


def test_the_real_measurement_leaves_the_runs_random_streams_alone():
    cfg = fixed_side(load_config(REPO / "configs" / "fast-cpu.yaml", {"train": {"batch_size": 4}}))
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    timings = measure_step_times(cfg, CPU, [Setting("fp32", False), Setting("fp32", True)], [16], 4, 100)
    assert torch.equal(torch.rand(3), expected)
    assert set(timings) == {"fp32", "fp32 + channels_last"} and all(t[16] > 0 for t in timings.values())


def test_a_run_trains_with_the_probes_choice_and_records_it(tmp_path, monkeypatch):
    monkeypatch.setattr(probe, "cpu_has_bf16", lambda: True)
    monkeypatch.setattr(probe, "MAX_PROBE_SHARE", 100.0)  # a 3-step run: timed all the same, for this test
    monkeypatch.setattr(probe, "measure_step_times", injected(BF16_FASTEST))
    data = make_image_folder(tmp_path / "images", train_per_class=4, test_per_class=2)
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(REPO / "configs" / "fast-cpu.yaml"), "--data", str(data), "--out",
                 str(run), "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--threads", "1",
                 "--precision", "auto", "--quiet"]) == 0
    meta = json.loads((run / "config.json").read_text())
    assert meta["precision_probe"]["precision"] == "bf16" and meta["precision_probe"]["channels_last"] is True
    assert "| precision | bf16 + channels_last (measured; seconds per step: " in (run / "README.md").read_text()
    # the run's own config still says auto: a resumed run keeps the recorded choice
    assert "precision: auto" in (run / "config.yaml").read_text()
    ckpt = torch.load(run / "checkpoint.pt", weights_only=True)
    assert ckpt["config"]["train"]["precision"] == "auto" and ckpt["progress"]["precision"]["precision"] == "bf16"


@pytest.mark.parametrize("cpuinfo, expected", [
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_bf16\n", True),  # AMD EPYC (Zen 4/5)
    ("processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni\n", False),  # AVX-512 without bf16 units
    ("processor\t: 0\nflags\t\t: fpu amx_bf16 amx_tile\n", True),  # Intel with AMX
    ("processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n", True),  # Arm with FEAT_BF16
])
def test_bf16_is_timed_only_on_cpus_with_bf16_units(cpuinfo, expected):
    assert probe.cpu_has_bf16(cpuinfo) is expected
