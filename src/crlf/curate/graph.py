"""The k-nearest-neighbour graph of a set of embeddings (cosine similarity), through faiss.

Every curation step reads this one graph: duplicate candidates are close neighbours, the local outlier
score is the distance to them, typicality is its inverse. Exact inner-product search (``IndexFlatIP``)
up to ``EXACT_LIMIT`` rows: 50,000 x 512 against itself is 1.3 T multiply-adds, well under a minute on 2
cores. Beyond, an inverted-file index (``IndexIVFFlat``) answers in a fraction of the time; its recall
against exact search is measured on a sample and returned, so that an approximate answer is never silent.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from crlf.errors import UsageError

EXACT_LIMIT = 300_000
RECALL_SAMPLE = 1_000


def require_faiss():
    try:
        import faiss
    except ImportError:
        raise UsageError("crlf curate needs faiss for its neighbour search: pip install faiss-cpu "
                         "(a dependency of crlf: pip install -e . installs it).") from None
    return faiss


def unit(x: np.ndarray, chunk: int = 65_536) -> np.ndarray:
    """float32 copy with L2-normalised rows, ``(N, D) -> (N, D)``, normalised in chunks so that a memory-mapped
    input is read once and never converted whole to float64."""
    out = np.empty(x.shape, dtype=np.float32)
    for start in range(0, len(x), chunk):
        block = np.asarray(x[start:start + chunk], dtype=np.float32)  # (c, D)
        out[start:start + chunk] = block / np.maximum(np.linalg.norm(block, axis=1, keepdims=True), 1e-12)
    return out


@dataclass
class Graph:
    """Each row's ``k`` nearest other rows, most similar first."""

    similarities: np.ndarray  # (N, k) float32 cosine similarity
    indices: np.ndarray  # (N, k) int64 row numbers; never the row itself
    exact: bool
    recall: float  # recall@k of the approximate index against exact search on a sample (1.0 when exact)

    @property
    def k(self) -> int:
        return self.indices.shape[1]


def _drop_self(sims: np.ndarray, idx: np.ndarray, k: int, rows: np.ndarray | None = None):
    """Searched with k + 1: remove each row's own index (not always first: exact copies tie with it).
    ``rows``: the row number of each query (default 0..N-1)."""
    rows = np.arange(len(idx)) if rows is None else np.asarray(rows)
    is_self = (idx == rows[:, None]) | (idx < 0)  # faiss pads missing results with -1
    # Stable sort moves self / padding to the end and keeps the order of the rest.
    order = np.argsort(is_self, axis=1, kind="stable")[:, :k]  # (N, k)
    return np.take_along_axis(sims, order, 1), np.take_along_axis(idx, order, 1)


def _search(index, x: np.ndarray, k: int, batch: int, progress: bool, desc: str) -> tuple[np.ndarray, np.ndarray]:
    from tqdm.auto import tqdm

    sims = np.empty((len(x), k), dtype=np.float32)
    idx = np.empty((len(x), k), dtype=np.int64)
    for start in tqdm(range(0, len(x), batch), desc=desc, unit="batch", disable=not progress, leave=False):
        sims[start:start + batch], idx[start:start + batch] = index.search(x[start:start + batch], k)
    return sims, idx


def knn_graph(embeddings: np.ndarray, k: int = 20, exact: bool | None = None, seed: int = 0,
              progress: bool = False) -> Graph:
    """The ``k`` nearest neighbours of every row of ``embeddings`` ``(N, D)`` among the others (cosine).

    ``exact=None``: exact up to ``EXACT_LIMIT`` rows, approximate (IVF) beyond."""
    faiss = require_faiss()
    n = len(embeddings)
    if n < 2:
        raise UsageError(f"curation needs at least 2 images (got {n}).")
    k = min(k, n - 1)
    x = unit(embeddings)  # (N, D)
    exact = n <= EXACT_LIMIT if exact is None else exact
    if exact:
        flat = faiss.IndexFlatIP(x.shape[1])
        flat.add(x)
        sims, idx = _search(flat, x, k + 1, 4096, progress, "neighbours (exact)")
        sims, idx = _drop_self(sims, idx, k)
        return Graph(sims, idx, True, 1.0)
    # 2 sqrt(N) lists (2,000 for a million rows), trained with 10 k-means iterations on 40 rows per list
    # (faiss asks for 39): its defaults (25 iterations, up to 256 rows per list) spend over an hour on 2
    # cores at a million rows; the recall is measured below, on every call.
    nlist = int(2 * np.sqrt(n))
    ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], nlist, faiss.METRIC_INNER_PRODUCT)
    ivf.cp.niter = 10
    ivf.cp.max_points_per_centroid = 40
    rng = np.random.default_rng(seed)
    ivf.train(x[np.sort(rng.choice(n, min(n, 40 * nlist), replace=False))])
    ivf.add(x)
    ivf.nprobe = max(8, nlist // 128)
    sims, idx = _search(ivf, x, k + 1, 16_384, progress, "neighbours (IVF)")
    # Rows whose probed lists held fewer than k others come back padded with -1: search those exactly.
    short = np.flatnonzero(((idx >= 0) & (idx != np.arange(n)[:, None])).sum(1) < k)
    if len(short):
        sims[short], idx[short] = _exact_search(x, short, k + 1)
    sims, idx = _drop_self(sims, idx, k)
    sample = np.sort(rng.choice(n, min(n, RECALL_SAMPLE), replace=False))
    true_sims, true_idx = _exact_search(x, sample, k + 1)  # (S, k+1)
    _, true_idx = _drop_self(true_sims, true_idx, k, sample)
    found = sum(len(np.intersect1d(a, b)) for a, b in zip(idx[sample], true_idx))
    return Graph(sims, idx, False, found / true_idx.size)


def _exact_search(x: np.ndarray, rows: np.ndarray, k: int, block: int = 65_536, queries_per_block: int = 1_024
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` (similarities, indices) ``(R, k)`` of the rows ``rows`` among all of ``x`` ``(N, D)``.
    By blocks of queries and of ``x`` (a similarity block is at most 1,024 x 65,536, 256 MB), and without a
    flat faiss index, which would hold a second copy of a million embeddings (2 GB)."""
    out_s = np.empty((len(rows), k), dtype=np.float32)
    out_i = np.empty((len(rows), k), dtype=np.int64)
    for q in range(0, len(rows), queries_per_block):
        queries = x[rows[q:q + queries_per_block]]  # (r, D)
        best_s = np.full((len(queries), k), -np.inf, dtype=np.float32)
        best_i = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(x), block):
            s = queries @ x[start:start + block].T  # (r, c)
            part = np.argpartition(-s, min(k, s.shape[1]) - 1, axis=1)[:, :k]  # (r, <=k) the block's best
            both_s = np.concatenate([best_s, np.take_along_axis(s, part, 1)], 1)  # (r, <=2k)
            both_i = np.concatenate([best_i, part + start], 1)
            top = np.argsort(-both_s, axis=1, kind="stable")[:, :k]
            best_s, best_i = np.take_along_axis(both_s, top, 1), np.take_along_axis(both_i, top, 1)
        out_s[q:q + len(queries)], out_i[q:q + len(queries)] = best_s, best_i
    return out_s, out_i
