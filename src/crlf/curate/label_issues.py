"""Images whose given label is probably wrong: confident learning on out-of-fold probe probabilities.

A plain neighbour vote is too noisy with a self-supervised encoder: on CIFAR-10 with 5 % flipped labels, a
20-neighbour vote flagged 277 images at precision 0.14 and recall 0.25 (issue 19). Here every image's class
probabilities come from the evaluation's linear probe trained on the *other* folds (so an image never
vouches for its own label), and each class gets its own threshold, the mean probability of that class over
the images labelled with it (Northcutt, Jiang & Chuang, "Confident Learning", JAIR 2021, arXiv 1911.00068).
An image is confidently of class j when p_j reaches t_j; the counts of "given i, confidently j", calibrated
to the class sizes, estimate how many labels are wrong (their off-diagonal sum).

Flagging every image confidently of another class over-flags with a weak probe (1,318 of 3,190 images at
47 % probe accuracy, precision 0.10: issue 27). So only the estimated number is flagged, never more than
``MAX_SHARE`` of the folder, the images whose given class is the least probable first (self-confidence); under
``MIN_ACCURACY`` of cross-validated accuracy the page says the encoder is too weak to tell and lists only the
most confident few. bench/curate_loso.py chose these constants leave-one-set-out.

The count is only as good as the probe. bench/curate_labels.py relabels the planted sets at 0-20 % uniform and
pair noise and adds two synthetic stronger encoders. With the stronger one (probe 0.68-0.96 on the 10k-50k
sets) the count is 1.0-1.4x the wrong labels at 5-20 % noise, up to 2x at 1-2 %, and under 1 % of a clean
folder. At the 0.55-0.6 of a 20-minute CPU encoder it is 30-39 % of the folder whatever the rate, 0 %
included: the probe's own mistakes look like wrong labels to it, and no count from its probabilities alone
can take them apart. Past the cap the page says so (``LabelIssues.over_cap``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from crlf.errors import UsageError
from crlf.evaluate import choose_weight_decay, fit_linear_probe

FOLDS = 5


def out_of_fold_probabilities(x: np.ndarray, y: np.ndarray, num_classes: int, folds: int = FOLDS, seed: int = 0,
                              max_iter: int = 100, progress: bool = False) -> np.ndarray:
    """Softmax probabilities ``(N, C)`` of each row of ``x`` ``(N, D)`` from the linear probe fitted on the
    other ``folds - 1`` folds (stratified). The weight decay is chosen once, on a held-out part of all
    labels (the probe's own rule), and each fold is one fit with it: five searches would cost five times as
    much (39 -> 28 s on 51,670 x 512 on 2 cores, BENCHMARKS.md, issue 27)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y, minlength=num_classes)
    folds = int(min(folds, counts[counts > 0].min()))
    if folds < 2:
        raise UsageError("every class needs at least 2 labelled images for out-of-fold probabilities.")
    decay = choose_weight_decay(x, y, num_classes, max_iter=max_iter, seed=seed)
    probs = np.zeros((len(x), num_classes), dtype=np.float32)
    splits = StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y)
    for fit, held in tqdm(list(splits), desc="out-of-fold probe", unit="fold", disable=not progress, leave=False):
        probe = fit_linear_probe(x[fit], y[fit], num_classes, decay, max_iter=max_iter)
        probs[held] = probe.logits(x[held]).softmax(1).numpy()  # (h, C)
    return probs


def class_thresholds(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-class threshold ``(C,)``: mean p_j over the images labelled j (1.0 for a class with none, so
    that nothing is ever confidently of it)."""
    out = np.ones(probs.shape[1], dtype=np.float32)
    for j in np.unique(y):
        out[j] = probs[y == j, j].mean()
    return out


MAX_SHARE = 0.1  # never flag more than this share of the labelled images, whatever the estimate
MIN_ACCURACY = 0.55  # below this cross-validated probe accuracy the probabilities cannot tell a wrong label
WEAK_SHARE = 0.01  # ... and only this share of the images, the most confident candidates, is listed


def probe_cross_validated_accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of out-of-fold predictions ``probs`` ``(N, C)`` against ``y`` ``(N,)``: the probe's
    cross-validated accuracy."""
    return float((probs.argmax(1) == y).mean())


def confident_class(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The class ``(N,)`` each image is confidently of: the most probable class j whose p_j reaches its
    threshold t_j; -1 where none does."""
    t = class_thresholds(probs, y)  # (C,)
    above = probs >= t[None, :] - 1e-6  # (N, C); the margin: a class whose images all agree equals its mean
    return np.where(above.any(1), np.where(above, probs, -1.0).argmax(1), -1)


def confident_joint(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Confident learning's joint ``(C, C)``: counts of images given label i that are confidently of class j,
    calibrated so that row i sums to the number of images labelled i and the whole to N (Northcutt et al.,
    2021, eq. 3; cleanlab's ``calibrate_confident_joint``)."""
    c = probs.shape[1]
    confident = confident_class(probs, y)
    has_any = confident >= 0
    joint = np.zeros((c, c))
    np.add.at(joint, (y[has_any], confident[has_any]), 1.0)
    counts = np.bincount(y, minlength=c).astype(np.float64)  # (C,)
    joint = joint / np.maximum(joint.sum(1, keepdims=True), 1.0) * counts[:, None]
    return joint / max(joint.sum(), 1.0) * counts.sum()


def estimated_issue_count(probs: np.ndarray, y: np.ndarray) -> int:
    """How many given labels are wrong, estimated: the off-diagonal mass of the calibrated confident joint."""
    joint = confident_joint(probs, y)
    return int(round(joint.sum() - np.trace(joint)))


def rank_by_self_confidence(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The candidates ``(M,)``, the most certain first: rows on which another class is more probable than the
    given one, ordered by the probability of the given class, lowest first (cleanlab's "self-confidence").
    Unlike the order before, a row need not reach another class's confident-learning threshold: the rows that
    rule dropped held wrong labels too.

    A wrong label names a class the image may have nothing of, so its probability is near 0; the probe's own
    mistakes mostly keep the true class second. Ranked this way, the flags (about 2x the wrong count) held 0.34-0.38
    wrong labels on the planted sets at 5 % uniform noise, where the normalised margin (used before) held
    0.24-0.27, and 0.32-0.33 against 0.23-0.26 at 5 % pair noise (bench/curate_labels.py, issue 27)."""
    p_given = probs[np.arange(len(y)), y]  # (N,)
    rows = np.flatnonzero(probs.argmax(1) != y)
    return rows[np.argsort(p_given[rows], kind="stable")]


def most_probable_other(probs: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The most probable class other than the given one ``(N,)``."""
    others = probs.copy()
    others[np.arange(len(y)), y] = -1.0
    return others.argmax(1)


@dataclass
class LabelIssues:
    rows: np.ndarray  # (M,) flagged rows, the most certain first (lowest probability of the given class)
    given: np.ndarray  # (M,) given class
    suggested: np.ndarray  # (M,) the most probable other class
    confidence: np.ndarray  # (M,) out-of-fold probability of the suggested class
    estimated: int  # confident learning's estimate of how many labels are wrong
    accuracy: float  # the probe's cross-validated accuracy
    too_weak: bool  # accuracy under MIN_ACCURACY: only the most confident candidates are listed
    over_cap: bool  # the estimate passed the cap: it counts the probe's own doubt, not only wrong labels


def find_label_issues(probs: np.ndarray, y: np.ndarray, max_share: float = MAX_SHARE,
                      min_accuracy: float = MIN_ACCURACY, weak_share: float = WEAK_SHARE) -> LabelIssues:
    """About as many flags as confident learning estimates wrong labels, the lowest probability of the given
    class first, from out-of-fold ``probs`` ``(N, C)`` and given labels ``y`` ``(N,)``.

    Flagging every image that is "confidently of another class" flags far more than are wrong when the
    probe is weak (41 % of a folder at 47 % probe accuracy: issue 27). So the count is the calibrated
    joint's, never more than the rows it puts off the diagonal (the calibration can raise it past them) nor
    than ``max_share`` of the images. Under ``min_accuracy`` no count is believable: only the ``weak_share``
    most confident candidates."""
    accuracy = probe_cross_validated_accuracy(probs, y)
    estimated = estimated_issue_count(probs, y)
    too_weak = accuracy < min_accuracy
    confident = confident_class(probs, y)
    off_diagonal = int(((confident >= 0) & (confident != y) & (probs.argmax(1) != y)).sum())
    cap = int(np.ceil((weak_share if too_weak else max_share) * len(y)))
    rows = rank_by_self_confidence(probs, y)[:min(estimated, off_diagonal, cap)]
    other = most_probable_other(probs[rows], y[rows])
    return LabelIssues(rows, y[rows], other, probs[rows, other], estimated, accuracy, too_weak,
                       estimated > int(np.ceil(max_share * len(y))))
