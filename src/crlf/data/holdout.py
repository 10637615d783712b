"""The evaluation splits of a run's data: the source's own train/test, or, for a labelled folder without a
test split, a seeded, stratified hold-out of its images that the linear probe and kNN never train on.

Pretraining reads no labels and sees every image of such a folder, the held-out ones included: the figures
then measure how well frozen features separate the classes of images the encoder has seen unlabelled,
which is the situation of a user who pretrains on their own folder. metrics.json says so, and lists the
held-out files.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crlf.data.sources import Dataset, Split, balanced_subset
from crlf.errors import UsageError

DEFAULT_FRACTION = 0.2


def check_fraction(fraction: float) -> None:
    if not 0 < fraction < 1:
        raise UsageError(f"--eval-split must be a share of the images between 0 and 1, e.g. 0.2 (got {fraction}).")


def stratified_holdout(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(kept, held)``: sorted row indices of ``labels`` ``(N,)``, disjoint, covering every row.

    Each class holds out ``round(fraction * n)`` of its ``n`` images (at least one where it has two or
    more, never its last one), drawn with ``seed``. Written here rather than with scikit-learn's
    ``train_test_split(stratify=...)``, which refuses a class of one image: a user's folder can have one."""
    check_fraction(fraction)
    rng = np.random.default_rng(seed)
    held = []
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)  # (n_c,)
        take = 0 if len(rows) < 2 else min(len(rows) - 1, max(1, round(fraction * len(rows))))
        held.append(rng.permutation(rows)[:take])
    held_rows = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept = np.setdiff1d(np.arange(len(labels)), held_rows)
    return kept, held_rows


@dataclass
class EvaluationSplits:
    train: Split  # what the linear probe and kNN train on
    test: Split  # what they are measured on
    record: dict  # for metrics.json: which split, and which images were held out


def evaluation_splits(dataset: Dataset, limit: int | None, seed: int, fraction: float = DEFAULT_FRACTION
                      ) -> EvaluationSplits:
    """The source's test split when it has one; otherwise a stratified hold-out of its labelled images.
    The training side is the class-balanced subset of ``limit`` images that pretraining saw (all without)."""
    if dataset.test is not None:
        return EvaluationSplits(balanced_subset(dataset.train, limit, seed=seed), dataset.test,
                                {"kind": "test split", "test_images": len(dataset.test)})
    kept, held = stratified_holdout(dataset.train.labels, fraction, seed)
    if len(held) == 0:
        raise UsageError(f"a hold-out of {fraction:g} leaves no image to evaluate on: every class has a single "
                         f"image. Add images, or pass a labelled copy with a test split (ROOT/test/<class>/...).")
    test = dataset.train.subset(held)
    record = {"kind": "held-out", "fraction": fraction, "seed": seed, "test_images": len(held),
              "note": f"'{dataset.source}' has no test split: {len(held)} of its {len(dataset.train)} labelled "
                      f"images ({fraction:.0%} of each class, seed {seed}) were held out; the linear probe and "
                      f"kNN never trained on them. Pretraining, which reads no labels, saw them.",
              "held_out_files": list(test.files)}
    return EvaluationSplits(balanced_subset(dataset.train.subset(kept), limit, seed=seed), test, record)
