"""Exact cosine-similarity neighbours: the one implementation behind the kNN evaluation, the kNN monitor,
retrieval metrics, the report's neighbour grid, ``crlf search`` and the demo.

Cosine similarity is the geometry the self-supervised losses train (they compare L2-normalised
embeddings), so every neighbour search in CRLF uses it. Search is by chunked matrix products: for
CIFAR-10 (50,000 x 512) a query is 25 M multiply-adds, about 5 ms on one CPU core, and exact. faiss (an
IVF or HNSW index) would pay from a few million vectors, or thousands of queries a second; below that its
build time and approximate answers buy nothing.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F


def unit_rows(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 tensor with L2-normalised rows: ``(N, D) -> (N, D)`` (a single ``(D,)`` vector -> ``(1, D)``);
    dot products of such rows are cosine similarities."""
    x = torch.as_tensor(np.asarray(x, dtype=np.float32) if isinstance(x, np.ndarray) else x, dtype=torch.float32)
    return F.normalize(torch.atleast_2d(x), dim=1)


class CosineIndex:
    """A bank of vectors, normalised once; exact cosine similarities and top-k of any queries."""

    def __init__(self, bank: np.ndarray | torch.Tensor):
        self.vectors = unit_rows(bank)  # (N, D)

    def __len__(self) -> int:
        return len(self.vectors)

    def similarities(self, queries: np.ndarray | torch.Tensor, chunk: int = 1024) -> Iterator[tuple[int, torch.Tensor]]:
        """``(start, sims)`` per chunk of queries, ``sims`` ``(m, N)``: the full similarity matrix is never held
        (10,000 x 50,000 floats would be 2 GB)."""
        q = unit_rows(queries)  # (M, D)
        for start in range(0, len(q), chunk):
            yield start, q[start:start + chunk] @ self.vectors.T  # (m, N)

    def topk(self, queries: np.ndarray | torch.Tensor, k: int, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``k`` most similar bank rows of each query, most similar first: (similarities, indices),
        each ``(M, k)``; ``k`` is capped at the bank's size."""
        k = min(k, len(self))
        values, indices = [], []
        for _, sims in self.similarities(queries, chunk):
            top = sims.topk(k, dim=1)  # (m, k), sorted
            values.append(top.values)
            indices.append(top.indices)
        return torch.cat(values), torch.cat(indices)
