"""Retrieval (recall@k, mAP) of test queries against the train set, and k-means clustering (NMI, ARI).

Both use cosine geometry, the one the contrastive loss trained: features are L2-normalised first.
The (M, N) similarity matrix is never held whole (10,000 x 50,000 floats would be 2 GB): queries go in
chunks, and each chunk is ranked in full for mAP.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score


@torch.no_grad()
def retrieval_metrics(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                      ks=(1, 5, 10), chunk: int = 256) -> dict:
    """recall@k: a query is a hit when any of its top-k train neighbours shares its class.
    mAP: mean over queries of the average precision of the full train list ranked by cosine similarity,
    where "relevant" means "same class"; queries whose class is absent from train are left out."""
    bank = F.normalize(torch.as_tensor(train_x, dtype=torch.float32), dim=1)  # (N, D)
    bank_y = torch.as_tensor(np.asarray(train_y), dtype=torch.int64)  # (N,)
    queries = F.normalize(torch.as_tensor(test_x, dtype=torch.float32), dim=1)  # (M, D)
    query_y = torch.as_tensor(np.asarray(test_y), dtype=torch.int64)  # (M,)
    kmax = min(max(ks), len(bank))
    positions = torch.arange(1, len(bank) + 1, dtype=torch.float32)  # (N,) ranks 1..N
    hits = {k: 0 for k in ks}
    ap_sum, ap_count = 0.0, 0
    for start in range(0, len(queries), chunk):
        q_y = query_y[start:start + chunk]  # (m,)
        sim = queries[start:start + chunk] @ bank.T  # (m, N)
        order = sim.argsort(dim=1, descending=True)  # (m, N) full ranking, needed for mAP
        relevant = (bank_y[order] == q_y[:, None]).float()  # (m, N) 1 where the ranked item shares the class
        for k in ks:
            hits[k] += int(relevant[:, :min(k, kmax)].amax(1).sum())
        n_rel = relevant.sum(1)  # (m,)
        precision = relevant.cumsum(1) / positions  # (m, N) precision at every rank
        ap = (precision * relevant).sum(1) / n_rel.clamp_min(1)  # (m,)
        ap_sum += float(ap[n_rel > 0].sum())
        ap_count += int((n_rel > 0).sum())
        del sim, order, relevant, precision
    out = {f"recall@{k}": hits[k] / len(queries) for k in ks}
    out["mAP"] = ap_sum / max(ap_count, 1)
    out |= {"metric": "cosine", "queries": "test", "database": "train", "num_queries": int(len(queries)),
            "database_size": int(len(bank))}
    return out


def clustering_metrics(features: np.ndarray, labels: np.ndarray, num_classes: int, seed: int = 0) -> dict:
    """k-means with one cluster per class on the L2-normalised features, scored against the labels."""
    x = F.normalize(torch.as_tensor(features, dtype=torch.float32), dim=1).numpy()  # (N, D)
    k = min(num_classes, len(x))
    pred = KMeans(n_clusters=k, n_init=3, random_state=seed).fit_predict(x)
    return {"nmi": float(normalized_mutual_info_score(labels, pred)),
            "ari": float(adjusted_rand_score(labels, pred)),
            "n_clusters": int(k), "algorithm": "k-means (sklearn, k-means++, n_init=3) on L2-normalised features",
            "seed": seed}
