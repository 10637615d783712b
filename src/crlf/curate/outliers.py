"""How unusual each image is: three scores as robust z-scores, the largest counts.

A k-nearest-neighbour distance alone fails on the outliers people actually have: junk comes in batches
(a camera's black frames, a folder of screenshots), and each image of a batch has the rest of the batch
as close neighbours (issue 19). And an embedding alone fails with a weak encoder: on planted CIFAR-10
sets (bench/curate_sets.py, issue 27) an encoder of a few hundred steps maps a batch of garment
silhouettes on black *into* the photographs (angle from the mean direction AUROC 0.75, first page 0 of 35;
a Ledoit-Wolf Mahalanobis distance 0.14).

So the score is the largest of:

* the angle from the data's mean direction (a batch of junk sits off to one side of it; photographs of
  another subject, which only the encoder can tell, too);
* the mean cosine distance to the k nearest neighbours, less ``LOCAL_MARGIN``: a lone image between two
  clusters, close to the overall mean and far from everything;
* with the images, :func:`pixel_score`: the logarithm of a robust Mahalanobis distance of five pixel
  statistics (saturation, edge energy, flat share, brightness, contrast; :func:`image_statistics`) --
  blank frames, documents, screenshots, shapes on a plain ground, noise, whatever the encoder makes of
  them --, or a blur statistic where that is further out, on either side (a blurred or a noisy
  photograph's other statistics are ordinary).

The combination and its margins were chosen leave-one-set-out over sixteen planted sets and two encoders
(bench/curate_loso.py; BENCHMARKS.md, "Curation on folders it was not tuned on"): this maximum (or the same
without the neighbour term, which ties it on every set) on 15 of the 16 held-out sets, the pixel score
alone when 4k-vehicles is held out. A robust Mahalanobis distance of the embeddings (issue 19's global score,
kept for the benchmarks in bench/curate.py) is no longer part of it: on the log scale of the pixel score it
put the photographs' own tail first (50k-blank, weak encoder: first page 0.86 -> 0.00 of the planted blank
frames). A max rather than a sum: one extreme view is enough, and a view in which junk looks ordinary cannot
dilute it.
"""

from __future__ import annotations

import numpy as np

from crlf.curate import FLAG_Z

LOCAL_MARGIN = 3.0  # robust z-units taken off the local score: it counts only where far beyond the angle's
PIXEL_MARGIN = 0.0  # the pixel score counts from 0 more robust z-units: bench/curate_loso.py (0, 2, 4, 8)


def typicality(sims: np.ndarray) -> np.ndarray:
    """TypiClust's typicality ``(N,)``: the inverse of the mean cosine distance to the ``k`` neighbours of
    the graph ``sims`` ``(N, k)`` (Hacohen et al., 2022, arXiv 2202.02794)."""
    return 1.0 / (1.0 - sims.mean(1) + 1e-6)


def local_score(sims: np.ndarray) -> np.ndarray:
    """Mean cosine distance to the ``k`` nearest neighbours ``(N,)``."""
    return 1.0 - sims.mean(1)


def angle_score(embeddings: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """Cosine distance ``(N,)`` of each unit row of ``embeddings`` ``(N, D)`` from their mean direction."""
    centre = np.zeros(embeddings.shape[1], dtype=np.float64)
    for start in range(0, len(embeddings), chunk):
        centre += embeddings[start:start + chunk].sum(0, dtype=np.float64)
    centre /= max(np.linalg.norm(centre), 1e-12)
    return np.concatenate([1.0 - np.asarray(embeddings[s:s + chunk]) @ centre.astype(np.float32)
                           for s in range(0, len(embeddings), chunk)])


def robust_z(x: np.ndarray, min_spread: float = 0.0) -> np.ndarray:
    """``(x - median) / (1.4826 MAD)``: a z-score that a few extreme values cannot inflate; the spread is
    never taken under ``min_spread`` (a difference smaller than that means nothing, however alike the rest)."""
    median = np.median(x)
    mad = 1.4826 * np.median(np.abs(x - median))
    return (x - median) / max(mad, min_spread, 1e-12 + 1e-6 * abs(median))


def outlier_scores(embeddings: np.ndarray, sims: np.ndarray, images=None) -> np.ndarray:
    """Combined outlier score ``(N,)`` (higher: more unusual; in robust z-units) from unit ``embeddings``
    ``(N, D)``, the neighbour graph's similarities ``sims`` ``(N, k)`` and, where given, the ``images``
    ``(N, 3, S, S)`` uint8 themselves: the largest of the angle from the mean direction, the local score
    less ``LOCAL_MARGIN`` and the pixel statistics' score less ``PIXEL_MARGIN``, each as a robust z-score."""
    parts = [robust_z(angle_score(embeddings)), robust_z(local_score(sims)) - LOCAL_MARGIN]
    if images is not None:
        parts.append(pixel_score(images) - PIXEL_MARGIN)  # already in robust z-units
    return np.maximum.reduce(parts).astype(np.float32)


def flagged_outliers(score: np.ndarray, min_share: float = 0.01, flag_z: float = FLAG_Z) -> np.ndarray:
    """Rows ``(M,)`` flagged as outliers from ``score`` ``(N,)``: every score of ``flag_z`` or more, and at
    least the ``min_share`` highest."""
    top = np.argsort(-score, kind="stable")[: int(np.ceil(min_share * len(score)))]
    return np.union1d(top, np.flatnonzero(score >= flag_z))


# The blur ratio's spread is never taken under this: re-encoding one image as JPEG moved its ratio by 0.035-0.05
# in the tests' folders of near-identical smooth images, which would otherwise read as 3.7-8 robust z-units
# (and, past COPY_FLAG_Z, keep the copy from being found). Photographs spread more (1.4826 MAD 0.075-0.087 on the sixteen planted sets of
# CIFAR-10), so it changes nothing there.
BLUR_MIN_SPREAD = 0.05
STATS_FIT_SAMPLE = 5_000  # images the robust covariance of the pixel statistics is fitted on
BLUR = 5  # the column of image_statistics that measures blur; the first five go into the robust distance


def image_statistics(images, chunk: int = 4096) -> np.ndarray:
    """Six plain statistics ``(N, 6)`` of each image of ``images`` ``(N, 3, S, S)`` uint8 (memory-mapped is
    fine: read in chunks): colour saturation, log edge energy, the share of pixels within 8 grey levels of
    the commonest one, mean brightness, contrast, and the blur ratio. Junk that an encoder maps among the
    photographs -- blank frames, documents, shapes on a plain ground, noise, grayscale or blurred images --
    stands out in them.

    The blur ratio is the mean grey difference between pixels two apart over that between neighbours: about
    1 where neighbouring pixels are as different as any (sharp texture, noise), 2 where grey changes evenly
    (a blurred image), whatever the image's contrast -- which edge energy alone confounds with blur."""
    out = []
    for start in range(0, len(images), chunk):
        rows = np.arange(start, min(start + chunk, len(images)))  # an index array: curate's Rows take no slices
        im = np.asarray(images[rows], dtype=np.float32)  # (c, 3, S, S)
        grey = im.mean(1)  # (c, S, S)
        saturation = (im.max(1) - im.min(1)).mean((1, 2))
        step1 = (np.abs(np.diff(grey, axis=1)).mean((1, 2)) + np.abs(np.diff(grey, axis=2)).mean((1, 2))) / 2
        step2 = (np.abs(grey[:, 2:] - grey[:, :-2]).mean((1, 2)) + np.abs(grey[:, :, 2:] - grey[:, :, :-2]).mean((1, 2))) / 2
        flat_grey = grey.reshape(len(grey), -1)  # (c, S*S)
        bins = np.clip((flat_grey // 16).astype(np.int64), 0, 15)
        mode = np.array([np.bincount(b, minlength=16).argmax() for b in bins]) * 16.0 + 8.0  # (c,)
        flat = (np.abs(flat_grey - mode[:, None]) <= 8).mean(1)
        blur = step2 / (step1 + 1e-3)  # the 1e-3 keeps a flat frame (0 / 0) at 0, far on the ratio's low side
        out.append(np.stack([saturation, np.log1p(step1), flat, grey.mean((1, 2)), grey.std((1, 2)), blur], 1))
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, BLUR + 1), np.float32)


def statistics_distance(stats: np.ndarray, seed: int = 0) -> np.ndarray:
    """Robust Mahalanobis distance ``(N,)`` of each row of ``stats`` ``(N, F)`` from the folder's own: a
    minimum-covariance-determinant fit (scikit-learn) on a seeded sample, so a batch of junk does not pull
    the fit towards itself. Zeros where there are too few rows to estimate a spread."""
    from sklearn.covariance import MinCovDet

    stats = np.asarray(stats, dtype=np.float64)
    if len(stats) < 3 * stats.shape[1]:
        return np.zeros(len(stats), dtype=np.float32)
    fit = np.random.default_rng(seed).choice(len(stats), min(len(stats), STATS_FIT_SAMPLE), replace=False)
    stats = stats + np.random.default_rng(seed).normal(0, 1e-6, stats.shape)  # identical rows make MCD singular
    model = MinCovDet(random_state=seed).fit(stats[fit])
    return np.sqrt(model.mahalanobis(stats)).astype(np.float32)


def pixel_score(images, seed: int = 0) -> np.ndarray:
    """How unusual each image's pixels are ``(N,)``, in robust z-units: the larger of the logarithm of the
    :func:`statistics_distance` of its first five :func:`image_statistics` and its blur ratio, on either side.
    Photographs sit near 1.6; blur raises it towards 2, noise lowers it towards 1 (speckle, grain, sensor
    noise: their other statistics stay ordinary). The low side was added after 5k-noisy failed (AUROC 0.55 ->
    0.99) and tested on two noise sets defined before it was scored, 5k-speckle (0.60 -> 0.99) and 3k-grain
    (0.38 -> 0.97), leave-one-set-out (bench/curate_loso.py, BENCHMARKS.md).

    The logarithm, because the distance of ordinary photographs is heavy-tailed (1.5 % of CIFAR-10 beyond 8
    robust z-units): on its own scale it hid a blur ratio that no ordinary image reached (10k-blurred: first
    page 0.07 -> 0.98 of the planted, bench/curate_loso.py)."""
    stats = image_statistics(images)  # (N, 6)
    if len(stats) < 3 * BLUR:  # too few images to estimate a spread
        return np.zeros(len(stats), dtype=np.float32)
    distance = statistics_distance(stats[:, :BLUR], seed)
    blur = robust_z(stats[:, BLUR], BLUR_MIN_SPREAD)  # high: blurred; low: noise, as different at 1 px as at 2
    return np.maximum(robust_z(np.log(distance + 1e-6)), np.abs(blur)).astype(np.float32)
