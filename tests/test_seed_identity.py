"""The `seed` and `fast-cpu` configs train exactly as the plain SimCLR loop that CRLF started from:
`crlf pretrain` and the frozen reference loop of tests/reference_simclr_loop.py run side by side in the
same test, on the same machine, and must write the same per-step losses.

Why both sides run here rather than against numbers in a file: the same code gives slightly different
losses on another CPU (oneDNN and ATen pick other kernels, other summation orders), and training amplifies
the difference step by step (Adam's first updates are about ``lr * sign(grad)``, so a rounding difference
in a near-zero gradient flips a whole update). Losses recorded on an Intel Xeon and replayed under the
SSE4.1 kernels (ONEDNN_MAX_CPU_ISA=SSE41 ATEN_CPU_CAPABILITY=default) differed by 1.5e-3 and 5.7e-3 at
step 3, more than the smallest real change moves them (a flip probability of 0.4 instead of 0.5: 6e-4 at
step 3). Two loops on one machine, doing the same operations in the same order, agree to the bit; ``RTOL``
only leaves room for a reordering of equal operations, 600x below that smallest change. The mutation test
below checks that every such change is still caught.
"""

from __future__ import annotations

import numpy as np
import pytest

from crlf.cli import main

from conftest import REPO, make_image_folder
from reference_simclr_loop import reference_step_losses

EPOCHS, BATCH = 2, 8
RTOL = 1e-6
# fast-cpu: one 16-px epoch of the two (progressive resizing) and fp32, which its `precision: auto` may not pick
CONFIG_EXTRA = {"seed": [], "fast-cpu": ["--set", "train.low_res_epochs=1", "--precision", "fp32"]}


@pytest.fixture
def images(tmp_path, monkeypatch):
    """36 tiny training images (12 per class) and their own decode cache."""
    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))
    return make_image_folder(tmp_path / "images", train_per_class=12, test_per_class=2)


def crlf_step_losses(data, run, name: str, *mutation: str) -> np.ndarray:
    """The per-step losses of `crlf pretrain` (2 epochs of 4 steps, one thread) with ``mutation`` flags."""
    assert main(["pretrain", "--config", str(REPO / "configs" / f"{name}.yaml"), "--data", str(data), "--out", str(run),
                 "--epochs", str(EPOCHS), "--batch-size", str(BATCH), "--device", "cpu", "--threads", "1", "--quiet",
                 *CONFIG_EXTRA[name], *mutation]) == 0
    return np.load(run / "step_losses.npy")  # (8,) float64


def mismatches(losses: np.ndarray, reference: np.ndarray, rtol: float = RTOL) -> list[str]:
    """The steps whose loss is outside ``rtol`` of the reference loop's (empty: a match)."""
    if losses.shape != reference.shape:
        return [f"{len(losses)} steps, expected {len(reference)}"]
    rel = np.abs(losses - reference) / np.abs(reference)
    return [f"step {i + 1}: {float(losses[i])!r} vs reference {float(reference[i])!r} (relative {rel[i]:.2e} > {rtol:g})"
            for i in np.flatnonzero(rel > rtol)]


@pytest.mark.parametrize("name", ["seed", "fast-cpu"])
def test_step_losses_match_the_plain_simclr_loop(tmp_path, images, name):
    reference = reference_step_losses(images, name, EPOCHS, BATCH)
    assert reference.shape == (EPOCHS * (36 // BATCH),) and np.isfinite(reference).all()
    assert mismatches(crlf_step_losses(images, tmp_path / "run", name), reference) == []


@pytest.mark.parametrize("name, mutation", [
    ("seed", ["--lr", "0.00033"]),  # the learning rate: first felt at step 2
    ("fast-cpu", ["--temperature", "0.075"]),
    ("fast-cpu", ["--set", "augment.crop_scale=[0.3,1.0]"]),
    ("seed", ["--set", "augment.flip_p=0.4"]),  # the smallest: steps 1-2 unchanged, step 3 by 6e-4
])
def test_a_changed_number_fails_the_comparison(tmp_path, images, name, mutation):
    reference = reference_step_losses(images, name, EPOCHS, BATCH)
    assert mismatches(crlf_step_losses(images, tmp_path / "run", name, *mutation), reference) != []


def test_the_comparison_itself():
    reference = np.array([3.0, 3.0, 3.0, 3.0])
    assert mismatches(np.array([3.0, 3.000001, 2.999999, 3.0]), reference, rtol=1e-6) == []
    assert mismatches(np.array([3.0, 3.0, 3.00001, 3.0]), reference, rtol=1e-6) == [
        "step 3: 3.00001 vs reference 3.0 (relative 3.33e-06 > 1e-06)"]
    assert mismatches(np.array([3.0, 3.0, 3.0]), reference) == ["3 steps, expected 4"]
