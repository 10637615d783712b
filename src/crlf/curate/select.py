"""Which images to label first: ``typical`` (TypiClust), ``diverse`` (greedy k-center) or ``random``.

With a few labels per class, TypiClust (Hacohen, Dekel & Weinshall, ICML 2022, arXiv 2202.02794) -- one
image per k-means cluster of self-supervised embeddings, the most typical of its cluster -- beats random
selection on CIFAR-10 by a wide margin, while k-center "coverage" (Sener & Savarese, 2018) does worse
than random: it picks the edges of the data. bench/curate.py measures all three on this project's encoder.
"""

from __future__ import annotations

import numpy as np

from crlf.curate.outliers import typicality
from crlf.errors import UsageError

STRATEGIES = ("typical", "diverse", "random")
TYPICALITY_K = 20  # neighbours for typicality inside a cluster, as in TypiClust
MINIBATCH_FROM = 50  # clusters from which MiniBatchKMeans replaces KMeans (as TypiClust does for large budgets)
ROWS_PER_BLOCK = 2048  # cluster members compared with the bank at once: a (2048, 8192) float32 block is 64 MiB


def check_budget(n: int) -> None:
    """``--select N`` needs N >= 1."""
    if n < 1:
        raise UsageError(f"--select must be >= 1 (got {n}).")


def _kmeans(x: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Cluster label ``(N,)`` of each row of ``x`` ``(N, D)`` for ``n`` clusters."""
    from sklearn.cluster import KMeans, MiniBatchKMeans

    if n < MINIBATCH_FROM:
        model = KMeans(n, n_init=1, random_state=seed)
    else:
        model = MiniBatchKMeans(n, n_init=1, random_state=seed, batch_size=max(1024, 3 * n))
    return model.fit_predict(x)


def _cluster_typicality(x: np.ndarray, bank_size: int = 8192, seed: int = 0) -> np.ndarray:
    """Typicality ``(m,)`` of each member of one cluster ``x`` ``(m, D)`` (unit rows) among the others.

    A cluster larger than ``bank_size`` (a million images in ten clusters) is compared with a random
    ``bank_size`` of its members instead of all: the k-th neighbour distance in a subsample ranks density
    the same way, at a cost linear in the cluster's size instead of quadratic."""
    m = len(x)
    if m == 1:
        return np.ones(1)
    bank = np.arange(m) if m <= bank_size else np.sort(np.random.default_rng(seed).choice(m, bank_size, replace=False))
    k = min(TYPICALITY_K, len(bank) - 1)
    out = np.empty(m)
    for start in range(0, m, ROWS_PER_BLOCK):
        stop = min(start + ROWS_PER_BLOCK, m)
        sims = x[start:stop] @ x[bank].T  # (c, B)
        own = np.arange(start, stop)[:, None] == bank[None, :]  # never one's own neighbour
        sims[own] = -np.inf
        top = -np.partition(-sims, k - 1, axis=1)[:, :k]  # (c, k) largest similarities
        out[start:stop] = typicality(top)
    return out


def select_typical(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """TypiClust: ``n`` clusters, the most typical image of each, largest cluster first. ``x`` ``(N, D)``
    unit rows; returns ``n`` row numbers."""
    labels = _kmeans(x, n, seed)
    sizes = np.bincount(labels, minlength=n)
    picks = []
    for c in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(labels == c)
        if len(members):
            picks.append(members[np.argmax(_cluster_typicality(x[members]))])
    picks = np.asarray(picks, dtype=np.int64)
    if len(picks) < n:  # k-means left clusters empty (duplicated points): fill with the most typical others
        rest = np.setdiff1d(np.arange(len(x)), picks)
        picks = np.concatenate([picks, rest[np.argsort(-_cluster_typicality(x[rest]))[: n - len(picks)]]])
    return picks


def select_diverse(x: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Greedy k-center (farthest-first traversal) on cosine distance from a seeded random start; ``x``
    ``(N, D)`` unit rows."""
    rng = np.random.default_rng(seed)
    picks = [int(rng.integers(len(x)))]
    nearest = 1.0 - x @ x[picks[0]]  # (N,) distance to the closest pick so far
    for _ in range(n - 1):
        nearest[picks[-1]] = -np.inf  # never twice
        i = int(np.argmax(nearest))
        picks.append(i)
        nearest = np.minimum(nearest, 1.0 - x @ x[i])
    return np.asarray(picks, dtype=np.int64)


def select(x: np.ndarray, n: int, strategy: str = "typical", seed: int = 0, exclude: np.ndarray | None = None) -> np.ndarray:
    """``n`` distinct row numbers of ``x`` ``(N, D)`` (unit rows) to label first, in the order to label them;
    rows in ``exclude`` (duplicates, outliers) are never chosen."""
    if strategy not in STRATEGIES:
        raise UsageError(f"unknown --strategy '{strategy}'; choose one of {', '.join(STRATEGIES)}.")
    check_budget(n)
    allowed = np.setdiff1d(np.arange(len(x)), exclude if exclude is not None else [])
    if n > len(allowed):
        raise UsageError(f"--select {n} asks for more images than the {len(allowed):,} left after removing "
                         f"duplicates and outliers; pass --select {len(allowed)} or fewer.")
    if strategy == "random":
        return np.random.default_rng(seed).choice(allowed, n, replace=False)
    pick = select_typical if strategy == "typical" else select_diverse
    return allowed[pick(np.ascontiguousarray(x[allowed]), n, seed)]
