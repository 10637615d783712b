"""How unusual each image is: four scores as robust z-scores, the largest counts.

A k-nearest-neighbour distance alone fails on the outliers people actually have: junk comes in batches
(a camera's black frames, a folder of screenshots), and each image of a batch has the rest of the batch
as close neighbours (issue 19). And an embedding alone fails with a weak encoder: on eight planted
CIFAR-10 sets (bench/curate_sets.py, issue 27) an encoder of a few hundred steps maps a batch of garment
silhouettes on black *into* the photographs (angle from the mean direction AUROC 0.75, first page 0 of 35;
a Ledoit-Wolf Mahalanobis distance 0.14).

So the score is the largest of:

* the angle from the data's mean direction (a batch of junk sits off to one side of it);
* a robust Mahalanobis distance (mean and covariance refitted three times without the most distant tenth,
  eigenvalues floored at a tenth of their mean): an image off in a direction the data hardly varies in;
  only from ``MAHALANOBIS_ROWS_PER_DIM`` images per dimension (1,024 for 512-d features), below which the
  covariance is not estimated but made up;
* the mean cosine distance to the k nearest neighbours, less ``LOCAL_MARGIN``: a lone image between two
  clusters, close to the overall mean and far from everything;
* with the images, a robust Mahalanobis distance of five pixel statistics (saturation, edge energy, flat
  share, brightness, contrast; :func:`image_statistics`): blank frames, documents, screenshots, shapes on
  a plain ground, noise, blur -- whatever the encoder makes of them.

The combination and its margins were chosen leave-one-set-out (bench/curate_loso.py; BENCHMARKS.md,
"Curation on folders it was not tuned on"). A max rather than a sum: one extreme view is enough, and a
view in which junk looks ordinary cannot dilute it.
"""

from __future__ import annotations

import numpy as np

TRIM = 0.10  # share of the most distant images left out of each refit of the mean and covariance
TRIM_ROUNDS = 3
EIGEN_FLOOR = 0.1  # covariance eigenvalues are floored at this share of their mean
FIT_SAMPLE = 100_000  # rows the mean and covariance are fitted on (a seeded sample of a larger set)
LOCAL_MARGIN = 3.0  # robust z-units by which the local score must exceed the global one to count
PIXEL_MARGIN = 0.0
# A covariance of D dimensions from fewer than 2 D images is mostly its eigenvalue floor: on 46 images of
# 512 dimensions the distances of the trimmed-out rows reached 10^7 robust z-units, on one CPU's rounding.
MAHALANOBIS_ROWS_PER_DIM = 2  # ... and the pixel statistics' score: bench/curate_loso.py


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


def outlier_scores(embeddings: np.ndarray, sims: np.ndarray, images=None) -> np.ndarray:
    """Combined outlier score ``(N,)`` (higher: more unusual; in robust z-units) from unit ``embeddings``
    ``(N, D)``, the neighbour graph's similarities ``sims`` ``(N, k)`` and, where given, the ``images``
    ``(N, 3, S, S)`` uint8 themselves: the largest of the angle from the mean direction, the robust
    Mahalanobis distance, the local score less ``LOCAL_MARGIN`` and the pixel statistics' score less
    ``PIXEL_MARGIN``, each as a robust z-score."""
    parts = [robust_z(angle_score(embeddings)), robust_z(local_score(sims)) - LOCAL_MARGIN]
    if len(embeddings) > MAHALANOBIS_ROWS_PER_DIM * embeddings.shape[1]:
        parts.append(robust_z(mahalanobis_score(embeddings)))
    if images is not None:
        parts.append(robust_z(pixel_score(images)) - PIXEL_MARGIN)
    return np.maximum.reduce(parts).astype(np.float32)


# Outlier score from which an image is kept out of the selection: bench/curate_loso.py, leave-one-set-out
# over eight planted sets with a 2-epoch and a 20-epoch (60.1 % linear) encoder: 3.5 when any set but a
# grayscale one is held out (4.0 then); 2.5 when both encoders were weak (BENCHMARKS.md, issue 27).
FLAG_Z = 3.5


def flagged_outliers(score: np.ndarray, min_share: float = 0.01, flag_z: float = FLAG_Z) -> np.ndarray:
    """Rows ``(M,)`` flagged as outliers from ``score`` ``(N,)``: every score of ``flag_z`` or more, and at
    least the ``min_share`` highest."""
    top = np.argsort(-score, kind="stable")[: int(np.ceil(min_share * len(score)))]
    return np.union1d(top, np.flatnonzero(score >= flag_z))


STATS_FIT_SAMPLE = 5_000  # images the robust covariance of the pixel statistics is fitted on


def image_statistics(images, chunk: int = 4096) -> np.ndarray:
    """Five plain statistics ``(N, 5)`` of each image of ``images`` ``(N, 3, S, S)`` uint8 (memory-mapped is
    fine: read in chunks): colour saturation, log edge energy, the share of pixels within 8 grey levels of
    the commonest one, mean brightness, contrast. Junk that an encoder maps among the photographs -- blank
    frames, documents, shapes on a plain ground, noise, grayscale or blurred images -- stands out in them."""
    out = []
    for start in range(0, len(images), chunk):
        rows = np.arange(start, min(start + chunk, len(images)))  # an index array: curate's Rows take no slices
        im = np.asarray(images[rows], dtype=np.float32)  # (c, 3, S, S)
        grey = im.mean(1)  # (c, S, S)
        saturation = (im.max(1) - im.min(1)).mean((1, 2))
        edges = (np.abs(np.diff(grey, axis=1)).mean((1, 2)) + np.abs(np.diff(grey, axis=2)).mean((1, 2))) / 2
        flat_grey = grey.reshape(len(grey), -1)  # (c, S*S)
        bins = np.clip((flat_grey // 16).astype(np.int64), 0, 15)
        mode = np.array([np.bincount(b, minlength=16).argmax() for b in bins]) * 16.0 + 8.0  # (c,)
        flat = (np.abs(flat_grey - mode[:, None]) <= 8).mean(1)
        out.append(np.stack([saturation, np.log1p(edges), flat, grey.mean((1, 2)), grey.std((1, 2))], 1))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 5), np.float32)


def pixel_score(images, seed: int = 0) -> np.ndarray:
    """Robust Mahalanobis distance ``(N,)`` of each image's :func:`image_statistics` from the folder's own:
    a minimum-covariance-determinant fit (scikit-learn) on a seeded sample, so a batch of junk does not
    pull the fit towards itself."""
    from sklearn.covariance import MinCovDet

    stats = image_statistics(images).astype(np.float64)  # (N, 5)
    if len(stats) < 3 * stats.shape[1]:  # too few images to estimate a spread
        return np.zeros(len(stats), dtype=np.float32)
    fit = np.random.default_rng(seed).choice(len(stats), min(len(stats), STATS_FIT_SAMPLE), replace=False)
    stats = stats + np.random.default_rng(seed).normal(0, 1e-6, stats.shape)  # identical rows make MCD singular
    model = MinCovDet(random_state=seed).fit(stats[fit])
    return np.sqrt(model.mahalanobis(stats)).astype(np.float32)
