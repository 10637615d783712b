"""Retrieval (recall@k, mAP) of test queries against the train set, and k-means clustering (NMI, ARI).

Both use cosine geometry, the one the self-supervised losses train: features are L2-normalised first.
Similarities come chunk by chunk from ``crlf.neighbours.CosineIndex``; each chunk is ranked in full for mAP.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from crlf.neighbours import CosineIndex, unit_rows


def ranked_relevance(sim: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Relevance bits (m, N) in order of decreasing similarity, row by row.

    Why not ``argsort``: a full ranking of 10,000 x 50,000 similarities by ``torch.argsort`` takes about a
    minute on 2 cores; numpy's SIMD value sort is ~15x faster but returns values, not indices. So the
    relevance bit is stored in the lowest mantissa bit of each similarity (a change of one unit in the last
    place, ~1e-7, which can only reorder exact near-ties) and read back after sorting the values.
    """
    bits = np.ascontiguousarray(sim, dtype=np.float32).view(np.int32)  # (m, N) the float's bit pattern
    bits = (bits & ~np.int32(1)) | relevant.astype(np.int32)  # (m, N) low bit = relevance
    ordered = np.sort(bits.view(np.float32), axis=1)[:, ::-1]  # (m, N) descending similarity
    return np.ascontiguousarray(ordered).view(np.int32) & 1  # (m, N) 0/1


@torch.no_grad()
def retrieval_metrics(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                      ks=(1, 5, 10), chunk: int = 256) -> dict:
    """recall@k: a query is a hit when any of its top-k train neighbours shares its class.
    mAP: mean over queries of the average precision of the full train list ranked by cosine similarity,
    where "relevant" means "same class"; queries whose class is absent from train are left out."""
    index = CosineIndex(train_x)
    bank_y = np.asarray(train_y)  # (N,)
    query_y = np.asarray(test_y)  # (M,)
    positions = torch.arange(1, len(index) + 1, dtype=torch.float32)  # (N,) ranks 1..N
    hits = {k: 0 for k in ks}
    ap_sum, ap_count = 0.0, 0
    for start, sims in index.similarities(test_x, chunk):
        q_y = query_y[start:start + chunk]  # (m,)
        sim = sims.numpy()  # (m, N)
        rel = torch.from_numpy(ranked_relevance(sim, bank_y[None, :] == q_y[:, None])).float()  # (m, N) ranked
        for k in ks:
            hits[k] += int(rel[:, :k].amax(1).sum())
        n_rel = rel.sum(1)  # (m,)
        ap = (rel.cumsum(1) / positions * rel).sum(1) / n_rel.clamp_min(1)  # (m,) mean precision at each hit
        ap_sum += float(ap[n_rel > 0].sum())
        ap_count += int((n_rel > 0).sum())
    out = {f"recall@{k}": hits[k] / len(query_y) for k in ks}
    out["mAP"] = ap_sum / max(ap_count, 1)
    out |= {"metric": "cosine", "queries": "test", "database": "train", "num_queries": int(len(query_y)),
            "database_size": int(len(index))}
    return out


def clustering_metrics(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> dict:
    """k-means with one cluster per class on the L2-normalised features, scored against the labels."""
    x = unit_rows(features).numpy()  # (N, D)
    k = min(num_classes, len(x))
    pred = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(labels, pred)),
            "ari": float(adjusted_rand_score(labels, pred)),
            "n_clusters": int(k), "algorithm": "k-means (sklearn, k-means++, n_init=3) on L2-normalised features",
            "seed": seed}
