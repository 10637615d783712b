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


def prototype_predict(support: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Nearest class mean by cosine, for a batch of episodes.

    support (E, n_way, K, D), query (E, Q, D) -> predicted way (E, Q)."""
    protos = F.normalize(F.normalize(support, dim=-1).mean(2), dim=-1)  # (E, n_way, D)
    return torch.bmm(F.normalize(query, dim=-1), protos.transpose(1, 2)).argmax(-1)  # (E, Q)


def sample_episodes(labels: np.ndarray, classes: np.ndarray, n_way: int, per_class: int, episodes: int,
                    rng: np.random.Generator) -> np.ndarray:
    """Indices (E, n_way, per_class): distinct classes per episode, distinct images per class."""
    ways = np.argsort(rng.random((episodes, len(classes))), axis=1)[:, :n_way]  # (E, n_way) class positions
    out = np.empty((episodes, n_way, per_class), dtype=np.int64)
    for pos, c in enumerate(classes):
        members = np.flatnonzero(labels == c)
        e, w = np.nonzero(ways == pos)  # the episodes (and their way slot) that drew class c
        if len(e):
            # a random key per (episode, member), smallest keys first: a random subset per episode
            pick = np.argsort(rng.random((len(e), len(members))), axis=1)[:, :per_class]
            out[e, w] = members[pick]
    return out


def few_shot_accuracy(features: np.ndarray, labels: np.ndarray, n_way: int = 5, k_shot: int = 1,
                      queries: int = 15, episodes: int = 600, seed: int = 0, batch: int = 100) -> dict:
    """Mean accuracy of ``episodes`` random episodes; shrinks ``n_way``/``queries`` (and says so) on tiny data."""
    x = torch.as_tensor(features, dtype=torch.float32)  # (N, D)
    labels = np.asarray(labels)
    counts = {c: int((labels == c).sum()) for c in np.unique(labels)}
    eligible = np.array([c for c, n in counts.items() if n >= k_shot + 1])  # a support set and >= 1 query
    if len(eligible) < 2:
        return {"skipped": f"needs >= 2 classes with >= {k_shot + 1} test images"}
    n_way_used = min(n_way, len(eligible))
    queries_used = min(queries, min(counts[c] for c in eligible) - k_shot)
    rng = np.random.default_rng(seed)
    idx = sample_episodes(labels, eligible, n_way_used, k_shot + queries_used, episodes, rng)  # (E, n_way, K+Q)
    truth = torch.arange(n_way_used).repeat_interleave(queries_used)  # (n_way*Q,) way of each query
    acc = []
    for start in range(0, episodes, batch):  # batches of episodes bound the memory: (b, n_way*Q, D)
        ep = torch.from_numpy(idx[start:start + batch])  # (b, n_way, K+Q)
        support = x[ep[:, :, :k_shot]]  # (b, n_way, K, D)
        query = x[ep[:, :, k_shot:]].flatten(1, 2)  # (b, n_way*Q, D)
        acc.append((prototype_predict(support, query) == truth).float().mean(1))  # (b,)
    acc = torch.cat(acc).numpy()
    return {"accuracy": float(acc.mean()), "ci95": float(1.96 * acc.std() / np.sqrt(episodes)),
            "n_way": n_way_used, "k_shot": k_shot, "queries_per_class": queries_used, "episodes": episodes,
            "classifier": "prototype (nearest class mean), cosine", "seed": seed}


def few_shot_eval(features: np.ndarray, labels: np.ndarray, shots=(1, 5), n_way: int = 5, queries: int = 15,
                  episodes: int = 600, seed: int = 0) -> dict:
    """{"5way_1shot": {...}, "5way_5shot": {...}} on the test features."""
    return {f"{n_way}way_{k}shot": few_shot_accuracy(features, labels, n_way, k, queries, episodes, seed)
            for k in shots}
