"""Label efficiency: the linear probe trained on 1 %, 10 % and 100 % of the training labels.

The frozen features are the same for every fraction; only the labelled subset changes. Subsets are
class-balanced with a fixed seed (``crlf.data.sources.balanced_subset``, the policy pretraining's
``--limit`` uses), and each subset's probe chooses its own weight decay on a held-out part of that subset,
never on test. At least two images per class are kept so the hold-out split is possible.
"""

from __future__ import annotations

import numpy as np

from crlf.data.sources import Split, balanced_subset
from crlf.evaluate import train_linear_probe

FRACTIONS = (0.01, 0.1, 1.0)


def fraction_key(fraction: float) -> str:
    return f"{fraction * 100:g}%"


def subset_index(labels: np.ndarray, fraction: float, num_classes: int, seed: int) -> np.ndarray:
    """Indices of a class-balanced ``fraction`` of ``labels`` (at least 2 per class)."""
    n = len(labels)
    limit = max(int(round(fraction * n)), 2 * num_classes)
    positions = np.arange(n)
    # balanced_subset picks rows of a Split; a Split of positions gives us the chosen indices back.
    return balanced_subset(Split(positions, np.asarray(labels)), limit, seed=seed).images


def label_efficiency(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                     num_classes: int, fractions=FRACTIONS, seed: int = 0, max_iter: int = 200,
                     full_result: dict | None = None) -> dict:
    """{"fractions": {"1%": {"linear_top1", "num_labels", "weight_decay"}, ...}, ...}.

    ``full_result`` ({"linear_top1", "weight_decay"}) reuses the 100 % probe the main evaluation already fitted.
    """
    out = {}
    for fraction in fractions:
        idx = subset_index(train_y, fraction, num_classes, seed)
        if fraction >= 1.0 and full_result is not None:
            out[fraction_key(fraction)] = {"fraction": fraction, "num_labels": int(len(idx)), **full_result}
            continue
        probe = train_linear_probe(train_x[idx], train_y[idx], num_classes, max_iter=max_iter, seed=seed)
        acc = float((probe.logits(test_x).argmax(1).numpy() == np.asarray(test_y)).mean())
        out[fraction_key(fraction)] = {"fraction": fraction, "num_labels": int(len(idx)), "linear_top1": acc,
                                       "weight_decay": probe.weight_decay}
    return {"fractions": out, "subset": "class-balanced, balanced_subset", "seed": seed,
            "protocol": "linear probe on frozen features; weight decay chosen on a held-out part of each subset"}
