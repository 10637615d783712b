"""Label issues on constructed out-of-fold probabilities: the calibrated count, the self-confidence order, the caps."""

from __future__ import annotations

import numpy as np

from crlf.curate.label_issues import (
    confident_joint,
    estimated_issue_count,
    find_label_issues,
    probe_cross_validated_accuracy,
    rank_by_self_confidence,
)


def two_classes(n: int = 100, wrong: int = 10, wrong_p: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows, half of each class, confident (0.9) in their own class; the last ``wrong`` rows are given
    class 1 while the probe puts ``wrong_p`` on class 0."""
    y = np.repeat([0, 1], n // 2)
    own = np.tile([0.8, 0.9, 0.99], n)[:n]  # the probe's confidence in the right class, never tied to its mean
    probs = np.where(y[:, None] == np.arange(2)[None, :], own[:, None], 1 - own[:, None])
    probs[-wrong:] = [wrong_p, 1 - wrong_p]
    return probs.astype(np.float32), y


def test_calibrated_count_is_the_number_of_wrong_labels():
    probs, y = two_classes(wrong=10)
    joint = confident_joint(probs, y)
    np.testing.assert_allclose(joint.sum(1), [50, 50])  # calibrated: each row sums to its class size
    assert estimated_issue_count(probs, y) == 10
    issues = find_label_issues(probs, y)
    assert sorted(issues.rows.tolist()) == list(range(90, 100))
    assert (issues.given == 1).all() and (issues.suggested == 0).all()
    assert issues.estimated == 10 and not issues.too_weak and not issues.over_cap


def test_rows_are_ranked_by_the_probability_of_their_given_class_lowest_first():
    own = np.tile([0.8, 0.9, 0.99], 10)  # 30 clean rows, 10 of each of 3 classes, never tied to a class mean
    clean_y = np.repeat([0, 1, 2], 10)
    clean = np.where(clean_y[:, None] == np.arange(3)[None, :], own[:, None], (1 - own[:, None]) / 2)
    odd = np.array([[0.95, 0.05, 0.0], [0.92, 0.03, 0.05], [0.3, 0.6, 0.1]])  # all given class 1
    probs, y = np.concatenate([clean, odd]).astype(np.float32), np.concatenate([clean_y, [1, 1, 1]])
    # rows 30 and 31 are confidently of class 0 (over its mean, 0.897). Row 31 gives its label 0.03 against row
    # 30's 0.05, so it comes first, though its margin (0.03 - 0.92 = -0.89) is above row 30's (-0.90).
    # Row 32 leans to its own class: not a candidate.
    assert rank_by_self_confidence(probs, y).tolist() == [31, 30]


def test_flags_never_pass_the_cap_whatever_the_estimate():
    probs, y = two_classes(n=100, wrong=40)  # 40 % "wrong": more than the cap lets through
    issues = find_label_issues(probs, y, max_share=0.1)
    assert estimated_issue_count(probs, y) > 10
    assert len(issues.rows) == 10
    assert issues.over_cap  # the page then says the count is not an estimate


def test_flags_never_pass_the_rows_confidently_of_another_class():
    # given 0: ten rows sure of class 0. Given 1: five sure of 1, four the probe doubts (p1 = 0.6, under class
    # 1's mean 0.74, and p0 = 0.4, under class 0's 0.9: no confident class) and one sure of class 0 (row 19).
    # Calibration scales given-1's confident counts [1, 5] up to its 10 rows: [1.67, 8.33], so the count is 2.
    p_of_0 = np.r_[np.full(10, 0.9), np.full(5, 0.01), np.full(4, 0.4), 0.95]
    probs, y = np.stack([p_of_0, 1 - p_of_0], 1).astype(np.float32), np.repeat([0, 1], 10)
    assert estimated_issue_count(probs, y) == 2
    assert find_label_issues(probs, y).rows.tolist() == [19]


def test_a_probe_too_weak_to_tell_lists_only_its_most_confident_candidates():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 400)
    probs = rng.dirichlet(np.ones(4), 400).astype(np.float32)  # a probe that knows nothing: accuracy ~0.25
    assert probe_cross_validated_accuracy(probs, y) < 0.4
    issues = find_label_issues(probs, y, min_accuracy=0.55, weak_share=0.01)
    assert issues.too_weak
    assert 0 < len(issues.rows) <= 4  # 1 % of 400
    assert issues.rows.tolist() == rank_by_self_confidence(probs, y)[: len(issues.rows)].tolist()
