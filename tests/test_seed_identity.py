"""The Method redesign changed no number: the `seed` and `fast-cpu` configs write the same per-step losses,
to every digit, as the SimCLR-only loop before it (commit 6727b24, values in tests/data)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from crlf.cli import main

from conftest import REPO, make_image_folder

GOLDEN = json.loads((REPO / "tests" / "data" / "golden_step_losses.json").read_text())


@pytest.mark.parametrize("name, extra", [("seed", []), ("fast-cpu", ["--set", "train.low_res_epochs=1"])])
def test_step_losses_identical_to_the_simclr_only_loop(tmp_path, monkeypatch, name, extra):
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "images", train_per_class=12, test_per_class=2)
    run = tmp_path / "run"
    assert main(["pretrain", "--config", str(REPO / "configs" / f"{name}.yaml"), "--data", str(data), "--out", str(run),
                 "--epochs", "2", "--batch-size", "8", "--device", "cpu", "--threads", "1", "--quiet", *extra]) == 0
    losses = np.load(run / "step_losses.npy")
    assert [repr(float(x)) for x in losses] == GOLDEN[name]
