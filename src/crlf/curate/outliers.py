"""How unusual each image is: a robust global score, and a local one where it is extreme.

A k-nearest-neighbour distance alone fails on the outliers people actually have: junk comes in batches
(a camera's black frames, a folder of screenshots), and each image of a batch has the rest of the batch
as close neighbours. On 3,000 CIFAR-10 images with 60 planted images of one kind, the mean distance to
20 neighbours ranked them *below* normal images (AUROC 0.19), while the distance from the data's mean
direction ranked them at 0.98 (issue 19).

The global score adds two robust z-scores of "far from the main mass". One is a Mahalanobis distance: how
far an image lies in units of the data's own spread along each direction. Two things keep a batch of junk
from hiding in it: the mean and covariance are refitted without the most distant tenth of the images,
three times (the trimming step of a minimum-covariance-determinant fit), so the batch does not pull the
fit towards itself; and the covariance's eigenvalues are floored at a tenth of their mean, so that a
direction in which the normal images hardly vary does not turn every small step along it into an outlier.
The other is the cosine distance from the data's mean direction, which the Mahalanobis distance misses
when the data is a few far-apart clusters: their spread inflates the covariance in every direction between
them, junk there included (tests/test_curate.py). On 50,230 CIFAR-10 images with 20 lone and 60 clustered
planted outliers (bench/curate.py) the sum scores AUROC 0.958 (Mahalanobis alone 0.958, the mean direction
alone 0.847, the 20-neighbour distance 0.19).

The local score (mean cosine distance to the k nearest neighbours) still catches what the global one
cannot: an image between two clusters sits close to the overall mean and far from everything. It counts
only where it is extreme (``LOCAL_MARGIN`` robust standard deviations above the global score's scale): in
every additive mix measured it cost more on batches than it gained on lone images.
"""

from __future__ import annotations

import numpy as np

TRIM = 0.10  # share of the most distant images left out of each refit of the mean and covariance
TRIM_ROUNDS = 3
EIGEN_FLOOR = 0.1  # covariance eigenvalues are floored at this share of their mean
FIT_SAMPLE = 100_000  # rows the mean and covariance are fitted on (a seeded sample of a larger set)
LOCAL_MARGIN = 3.0  # robust z-units by which the local score must exceed the global one to count


def typicality(sims: np.ndarray) -> np.ndarray:
    """TypiClust's typicality ``(N,)``: the inverse of the mean cosine distance to the ``k`` neighbours of
    the graph ``sims`` ``(N, k)`` (Hacohen et al., 2022, arXiv 2202.02794)."""
    return 1.0 / (1.0 - sims.mean(1) + 1e-6)


def local_score(sims: np.ndarray) -> np.ndarray:
    """Mean cosine distance to the ``k`` nearest neighbours ``(N,)``."""
    return 1.0 - sims.mean(1)


def _fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``(D,)`` and whitening matrix ``(D, D)`` (eigenvectors over the square roots of the floored
    eigenvalues) of the rows ``x`` ``(n, D)``."""
    mean = x.mean(0)
    cov = np.atleast_2d(np.cov(x - mean, rowvar=False))  # (D, D)
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    eigenvalues = np.maximum(eigenvalues, EIGEN_FLOOR * max(eigenvalues.mean(), 1e-12))
    return mean, eigenvectors / np.sqrt(eigenvalues)


def _distance(x: np.ndarray, mean: np.ndarray, whiten: np.ndarray) -> np.ndarray:
    """Mahalanobis distance ``(n,)`` of rows ``x`` ``(n, D)``."""
    return np.linalg.norm((np.asarray(x, dtype=np.float64) - mean) @ whiten, axis=1)


def mahalanobis_score(embeddings: np.ndarray, seed: int = 0, chunk: int = 65_536) -> np.ndarray:
    """Robust Mahalanobis distance ``(N,)`` of each row of ``embeddings`` ``(N, D)`` (memory-mapped is fine:
    read in chunks) from the main mass of the data."""
    n = len(embeddings)
    if n < 3:  # no spread to measure against
        return np.zeros(n, dtype=np.float32)
    rows = np.arange(n) if n <= FIT_SAMPLE else np.sort(np.random.default_rng(seed).choice(n, FIT_SAMPLE, replace=False))
    sample = np.asarray(embeddings[rows], dtype=np.float64)  # (n_fit, D)
    inliers = np.ones(len(sample), dtype=bool)
    for _ in range(TRIM_ROUNDS + 1):
        mean, whiten = _fit(sample[inliers])
        distance = _distance(sample, mean, whiten)
        inliers = distance <= np.quantile(distance, 1.0 - TRIM)
    return np.concatenate([_distance(embeddings[s:s + chunk], mean, whiten)
                           for s in range(0, n, chunk)]).astype(np.float32)


def angle_score(embeddings: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Cosine distance ``(N,)`` of each unit row of ``embeddings`` ``(N, D)`` from their mean direction."""
    centre = np.zeros(embeddings.shape[1], dtype=np.float64)
    for start in range(0, len(embeddings), chunk):
        centre += embeddings[start:start + chunk].sum(0, dtype=np.float64)
    centre /= max(np.linalg.norm(centre), 1e-12)
    return np.concatenate([1.0 - np.asarray(embeddings[s:s + chunk]) @ centre.astype(np.float32)
                           for s in range(0, len(embeddings), chunk)])


def global_score(embeddings: np.ndarray) -> np.ndarray:
    """How far each row of ``embeddings`` ``(N, D)`` lies from the main mass ``(N,)``: the sum of the robust
    z-scores of its Mahalanobis distance and its angle from the mean direction."""
    return (robust_z(mahalanobis_score(embeddings)) + robust_z(angle_score(embeddings))).astype(np.float32)


def robust_z(x: np.ndarray) -> np.ndarray:
    """``(x - median) / (1.4826 MAD)``: a z-score that a few extreme values cannot inflate."""
    median = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - median))
    return (x - median) / max(mad, 1e-12 + 1e-6 * abs(median))


def outlier_scores(embeddings: np.ndarray, sims: np.ndarray) -> np.ndarray:
    """Combined outlier score ``(N,)`` (higher: more unusual) from unit ``embeddings`` ``(N, D)`` and the
    neighbour graph's similarities ``sims`` ``(N, k)``."""
    return np.maximum(robust_z(global_score(embeddings)),
                      robust_z(local_score(sims)) - LOCAL_MARGIN).astype(np.float32)
