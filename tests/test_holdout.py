"""A labelled folder without a test split is evaluated on a seeded, stratified hold-out (crlf.data.holdout)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from crlf.cli import main
from crlf.data.holdout import stratified_holdout
from crlf.errors import UsageError

from conftest import SEED_CONFIG

QUICK = ["--epochs", "1", "--batch-size", "8", "--device", "cpu", "--threads", "1", "--quiet"]


def test_holdout_is_stratified_disjoint_complete_and_seeded():
    labels = np.repeat([0, 1, 2], [50, 20, 5])  # (75,) unbalanced classes
    kept, held = stratified_holdout(labels, 0.2, seed=0)
    assert np.intersect1d(kept, held).size == 0 and np.array_equal(np.union1d(kept, held), np.arange(75))
    assert np.bincount(labels[held]).tolist() == [10, 4, 1]  # 20 % of each class
    again, other = stratified_holdout(labels, 0.2, seed=0)[1], stratified_holdout(labels, 0.2, seed=1)[1]
    assert np.array_equal(held, again) and not np.array_equal(held, other)


def test_holdout_keeps_a_lone_image_and_one_of_each_pair_for_training():
    labels = np.array([0, 1, 1, 2, 2, 2])
    kept, held = stratified_holdout(labels, 0.9, seed=0)
    assert 0 in kept  # a class of one image is never held out: the probe needs it
    assert np.bincount(labels[kept], minlength=3).tolist() == [1, 1, 1]  # every class keeps one


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.2, 20])
def test_holdout_share_outside_0_1_is_named(fraction):
    with pytest.raises(UsageError, match=r"--eval-split must be a share of the images between 0 and 1"):
        stratified_holdout(np.zeros(10, dtype=int), fraction, seed=0)


def test_labelled_folder_without_test_split_is_evaluated_on_its_holdout(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))
    photos = tmp_path / "photos"
    rng = np.random.default_rng(0)
    for c, colour in enumerate([(200, 40, 40), (40, 190, 60), (40, 60, 210)]):
        (photos / f"class{c}").mkdir(parents=True)
        for i in range(10):
            pixels = np.clip(np.array(colour) + rng.normal(0, 25, (36, 36, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(photos / f"class{c}" / f"{i:02d}.png")
    run = tmp_path / "run"
    assert main(["run", "--config", str(SEED_CONFIG), "--data", str(photos), "--out", str(run), *QUICK]) == 0
    assert "evaluation skipped" not in capsys.readouterr().err
    metrics = json.loads((run / "metrics.json").read_text())
    split = metrics["evaluation_split"]
    assert split["kind"] == "held-out" and split["fraction"] == 0.2 and metrics["num_test"] == 6
    held = split["held_out_files"]
    assert len(held) == 6 and sorted({f.split("/")[-2] for f in held}) == ["class0", "class1", "class2"]
    assert "Pretraining, which reads no labels, saw them" in split["note"]
    assert metrics["num_train"] == 24 and np.load(run / "test_labels.npy").tolist().count(0) == 2
    assert "held-out images" in (run / "report.html").read_text()

    # crlf evaluate RUN --data ROOT --eval-split: the same folder with another share held out
    assert main(["evaluate", str(run), "--data", str(photos), "--eval-split", "0.3", "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["evaluation_split"]["fraction"] == 0.3 and metrics["num_test"] == 9
    assert main(["evaluate", str(run), "--eval-split", "1.5", "--quiet"]) == 2
    assert "eval.split (--eval-split) must be between 0 and 1" in capsys.readouterr().err
