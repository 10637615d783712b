"""The cheap extra metrics of the default evaluation, in one call for ``pipeline.evaluate_run``.

Budget: on CIFAR-10 (50,000 x 512 train, 10,000 x 512 test features) all of this takes well under a minute
on 2 CPU cores (bench/eval_speed.py), so it is part of every ``crlf run``.
"""

from __future__ import annotations

import time

import numpy as np

from crlf.downstream.fewshot import few_shot_eval
from crlf.downstream.label_efficiency import label_efficiency
from crlf.downstream.retrieval import clustering_metrics, retrieval_metrics


def default_extra_metrics(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                          num_classes: int, base: dict, seed: int = 0, max_iter: int = 200) -> dict:
    """{"label_efficiency", "few_shot", "retrieval", "clustering", "eval_extra_s"} for metrics.json.

    ``base`` is the main evaluation's metrics: its 100 % linear probe is reused, not refitted."""
    times = {}
    t0 = time.perf_counter()
    full = {"linear_top1": base["linear_top1"], "weight_decay": base["linear_probe"]["weight_decay"]}
    out = {"label_efficiency": label_efficiency(train_x, train_y, test_x, test_y, num_classes, seed=seed,
                                                max_iter=max_iter, full_result=full)}
    times["label_efficiency"], t0 = round(time.perf_counter() - t0, 2), time.perf_counter()
    out["few_shot"] = few_shot_eval(test_x, test_y, seed=seed)
    times["few_shot"], t0 = round(time.perf_counter() - t0, 2), time.perf_counter()
    out["retrieval"] = retrieval_metrics(train_x, train_y, test_x, test_y)
    times["retrieval"], t0 = round(time.perf_counter() - t0, 2), time.perf_counter()
    out["clustering"] = clustering_metrics(test_x, test_y, num_classes, seed=seed)
    times["clustering"] = round(time.perf_counter() - t0, 2)
    out["eval_extra_s"] = times
    return out
