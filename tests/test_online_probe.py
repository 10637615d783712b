"""The online linear probe (``crlf.training.monitors.online_probe``, ``train.online_probe``): it learns, it is logged per epoch,
it is off where asked or where there are no labels, and it never changes the encoder, the method's state or any
step's loss."""

from __future__ import annotations

import json

import numpy as np
import torch
from safetensors.torch import load_file

from crlf.cli import main
from crlf.training.monitors.online_probe import OnlineProbe, build_online_probe

from conftest import COLOUR_CLASSES, COLOURS, SEED_CONFIG, make_image_folder


def test_the_probe_learns_a_linearly_separable_task_and_scores_before_it_updates():
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 3
    probe = OnlineProbe(16, 3)
    accuracies = []
    for _ in range(60):
        labels = torch.randint(0, 3, (32,), generator=g)
        features = centres[labels] + torch.randn(32, 16, generator=g)
        accuracies.append(probe.step(features, labels))
    # Zero weights predict class 0 for everything: the first score is the share of class 0, before any update.
    assert accuracies[0] < 0.6
    assert np.mean(accuracies[-10:]) > 0.95


def test_unlabelled_rows_are_left_out_and_no_label_means_no_probe():
    probe = OnlineProbe(4, 2)
    assert probe.step(torch.randn(5, 4), torch.full((5,), -1)) is None
    assert float(probe.linear.weight.detach().abs().sum()) == 0  # nothing learnt from unlabelled rows
    assert build_online_probe(True, 4, np.full(10, -1), "cpu") is None
    assert build_online_probe(False, 4, np.arange(10) % 2, "cpu") is None
    assert build_online_probe(True, 4, np.arange(10) % 2, "cpu").linear.out_features == 2


def test_the_probe_never_changes_the_encoder_and_is_logged_per_epoch(tmp_path, monkeypatch):
    """Two runs, probe on and off: the same encoder weights and per-step losses, bit for bit; only the run with
    the probe logs online_probe_top1, above chance on coloured classes it can tell apart."""
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "images", 16, 2, classes=COLOUR_CLASSES, colours=COLOURS, noise=25, digits=2)
    runs = {}
    for probe in ("true", "false"):
        run = tmp_path / f"probe-{probe}"
        assert main(["pretrain", "--config", str(SEED_CONFIG), "--data", str(data), "--out", str(run), "--epochs", "3",
                     "--batch-size", "8", "--device", "cpu", "--threads", "1", "--quiet",
                     "--set", f"train.online_probe={probe}"]) == 0
        runs[probe] = run
    on, off = (load_file(str(runs[p] / "encoder.safetensors")) for p in ("true", "false"))
    assert on.keys() == off.keys() and all(torch.equal(on[k], off[k]) for k in on)
    assert np.array_equal(np.load(runs["true"] / "step_losses.npy"), np.load(runs["false"] / "step_losses.npy"))
    history = {p: [json.loads(line) for line in (runs[p] / "metrics.jsonl").read_text().splitlines()] for p in runs}
    assert all("online_probe_top1" not in r for r in history["false"])
    probe_top1 = [r["online_probe_top1"] for r in history["true"]]
    assert len(probe_top1) == 3 and probe_top1[-1] > 1 / 3 + 0.2, probe_top1  # chance: 1/3


def test_building_the_probe_draws_no_random_numbers():
    """A resumed run builds it after restoring torch's generator, from which MAE draws its masks."""
    torch.manual_seed(3)
    before = torch.get_rng_state()
    OnlineProbe(64, 10)
    assert torch.equal(torch.get_rng_state(), before)
