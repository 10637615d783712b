"""The online kNN monitor (``--eval-every N``): a cheap kNN top-1 on a fixed draw of training images."""

from __future__ import annotations

import numpy as np
import torch

from crlf.config import Config
from crlf.data.augment import normalize

MONITOR_BANK = 5000  # images whose features vote (the "training set" of the monitor's kNN)
MONITOR_QUERIES = 1000  # images classified by them; at most a fifth of a small training set
MONITOR_SEED = 12345  # its own fixed draw: independent of the run's seed, so runs compare on the same images
MONITOR_BATCH = 512  # feature extraction batch


def knn_monitor(encoder: torch.nn.Module, images: torch.Tensor, labels: np.ndarray, cfg: Config) -> float:
    """A cheap kNN top-1 while pretraining, to see learning (or collapse) early.

    Both the bank and the queries are fixed, disjoint parts of the labelled *training* images (STL-10's
    unlabeled rows, label -1, are left out): the test split stays unseen until ``crlf evaluate``. It draws no
    random numbers from the run's generators, so runs with and without the monitor train identically.
    """
    from crlf.evaluate import knn_predict

    labelled = np.flatnonzero(labels >= 0)  # (L,) all rows when every image has a label
    order = labelled[np.random.default_rng(MONITOR_SEED).permutation(len(labelled))]
    n_query = min(MONITOR_QUERIES, len(order) // 5)
    query_idx, bank_idx = order[:n_query], order[n_query:n_query + MONITOR_BANK]
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            def features(idx):  # (n, D)
                out = [encoder(normalize(images[torch.from_numpy(idx[i:i + MONITOR_BATCH]).to(images.device)],
                                         cfg.augment.mean, cfg.augment.std)).float().cpu()
                       for i in range(0, len(idx), MONITOR_BATCH)]
                return torch.cat(out).numpy()

            bank, queries = features(bank_idx), features(query_idx)
    finally:
        encoder.train(was_training)
    num_classes = int(labels.max()) + 1
    preds = knn_predict(bank, labels[bank_idx], queries, num_classes, ks=(min(cfg.eval.knn_k, len(bank_idx)),),
                        temperature=cfg.eval.knn_temperature)
    return float((next(iter(preds.values())) == labels[query_idx]).mean())
