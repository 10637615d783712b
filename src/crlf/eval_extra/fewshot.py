"""N-way K-shot episodes on frozen test features with a prototype classifier (Snell et al., 2017).

Each episode draws ``n_way`` classes, ``k_shot`` support and ``queries`` query images per class (disjoint),
averages the L2-normalised support features into one prototype per class and labels every query with the
prototype of highest cosine similarity. No training, so it measures the geometry of the features alone.
Reported: mean accuracy over episodes with a 95 % confidence interval, 1.96 * std / sqrt(episodes), the
convention of the few-shot literature (Chen et al., 2019).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def prototype_episode(support: torch.Tensor, support_y: torch.Tensor, query: torch.Tensor,
                      n_way: int) -> torch.Tensor:
    """Nearest class mean by cosine. support (n_way*K, D), support_y in [0, n_way), query (Q, D) -> (Q,)."""
    s = F.normalize(support, dim=1)  # (n_way*K, D)
    protos = torch.zeros(n_way, s.shape[1]).index_add_(0, support_y, s)  # (n_way, D) sums; norm makes it a mean
    return (F.normalize(query, dim=1) @ F.normalize(protos, dim=1).T).argmax(1)  # (Q,)


def few_shot_accuracy(features: np.ndarray, labels: np.ndarray, n_way: int = 5, k_shot: int = 1,
                      queries: int = 15, episodes: int = 600, seed: int = 0) -> dict:
    """Mean accuracy of ``episodes`` random episodes; shrinks ``n_way``/``queries`` (and says so) on tiny data."""
    x = torch.as_tensor(features, dtype=torch.float32)  # (N, D)
    labels = np.asarray(labels)
    by_class = {c: np.flatnonzero(labels == c) for c in np.unique(labels)}
    eligible = [c for c, idx in by_class.items() if len(idx) >= k_shot + 1]  # a support set and >= 1 query
    if len(eligible) < 2:
        return {"skipped": f"needs >= 2 classes with >= {k_shot + 1} test images"}
    n_way_used = min(n_way, len(eligible))
    queries_used = min(queries, min(len(by_class[c]) for c in eligible) - k_shot)
    rng = np.random.default_rng(seed)
    acc = np.empty(episodes)
    support_y = torch.arange(n_way_used).repeat_interleave(k_shot)  # (n_way*K,)
    query_y = torch.arange(n_way_used).repeat_interleave(queries_used)  # (n_way*Q,)
    for e in range(episodes):
        classes = rng.choice(eligible, size=n_way_used, replace=False)
        picks = [rng.choice(by_class[c], size=k_shot + queries_used, replace=False) for c in classes]
        support = x[np.concatenate([p[:k_shot] for p in picks])]  # (n_way*K, D)
        query = x[np.concatenate([p[k_shot:] for p in picks])]  # (n_way*Q, D)
        acc[e] = float((prototype_episode(support, support_y, query, n_way_used) == query_y).float().mean())
    return {"accuracy": float(acc.mean()), "ci95": float(1.96 * acc.std() / np.sqrt(episodes)),
            "n_way": n_way_used, "k_shot": k_shot, "queries_per_class": queries_used, "episodes": episodes,
            "classifier": "prototype (nearest class mean), cosine", "seed": seed}


def few_shot_eval(features: np.ndarray, labels: np.ndarray, shots=(1, 5), n_way: int = 5, queries: int = 15,
                  episodes: int = 600, seed: int = 0) -> dict:
    """{"5way_1shot": {...}, "5way_5shot": {...}} on the test features."""
    return {f"{n_way}way_{k}shot": few_shot_accuracy(features, labels, n_way, k, queries, episodes, seed)
            for k in shots}
