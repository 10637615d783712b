"""Time the frozen-feature evaluation on CIFAR-10-sized random features.

    nice -n 19 .venv/bin/python bench/eval_speed.py [--n 50000] [--m 10000] [--dim 512] [--classes 10]

Budget (issue 4): linear probe (weight-decay search on a 10 % hold-out + refit) and kNN (k=200 and k=20)
on 50,000 x 512 features each finish in under 30 s on a 2-core CPU. The extra default metrics
(label efficiency, few-shot, retrieval, clustering) are timed too: together they should stay well under
the ~3 minutes the whole default evaluation may take. Features are random Gaussian blobs around one mean
per class, so accuracies are meaningful (well above chance) but not the point: the wall times are.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch


def blobs(n: int, dim: int, classes: int, rng: np.random.Generator, centres: np.ndarray):
    y = rng.integers(0, classes, n)
    x = centres[y] + rng.normal(0, 1, (n, dim)).astype(np.float32)  # (n, dim)
    return x.astype(np.float32), y.astype(np.int64)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=50_000, help="train features")
    p.add_argument("--m", type=int, default=10_000, help="test features")
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=30.0)
    p.add_argument("--only-core", action="store_true", help="time only the linear probe and kNN")
    args = p.parse_args(argv)

    from crlf.evaluate import knn_predict, train_linear_probe

    rng = np.random.default_rng(0)
    centres = rng.normal(0, 0.15, (args.classes, args.dim)).astype(np.float32)
    train_x, train_y = blobs(args.n, args.dim, args.classes, rng, centres)
    test_x, test_y = blobs(args.m, args.dim, args.classes, rng, centres)
    print(f"{args.n:,} train / {args.m:,} test features of dim {args.dim}, {args.classes} classes, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    rows = []

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        rows.append((name, time.perf_counter() - t0, out))
        print(f"  {name:<34} {rows[-1][1]:7.1f} s   {out}", flush=True)
        return out

    full = {}

    def probe():
        pr = train_linear_probe(train_x, train_y, args.classes)
        full.update(linear_top1=float((pr.logits(test_x).argmax(1).numpy() == test_y).mean()),
                    weight_decay=pr.weight_decay)
        return f"top-1 {full['linear_top1']:.3f}, wd {pr.weight_decay:g}"

    def knn():
        preds = knn_predict(train_x, train_y, test_x, args.classes, ks=(200, 20))
        return f"top-1 k=200 {(preds[200] == test_y).mean():.3f}, k=20 {(preds[20] == test_y).mean():.3f}"

    timed("linear probe (wd search + refit)", probe)
    timed("kNN (k=200 and k=20)", knn)
    core = sum(r[1] for r in rows)
    if not args.only_core:
        from crlf.downstream.fewshot import few_shot_eval
        from crlf.downstream.label_efficiency import label_efficiency
        from crlf.downstream.retrieval import clustering_metrics, retrieval_metrics

        # as in crlf evaluate: the 100 % point reuses the probe above, so only 1 % and 10 % are fitted here
        timed("label efficiency (1 %, 10 %)", lambda: {k: round(v["linear_top1"], 3) for k, v in
                                                        label_efficiency(train_x, train_y, test_x, test_y,
                                                                         args.classes, full_result=full)["fractions"].items()})
        timed("few-shot (5-way 1/5-shot, 600 ep.)", lambda: {k: round(v["accuracy"], 3) for k, v in
                                                             few_shot_eval(test_x, test_y).items()})
        timed("retrieval (R@1/5/10, mAP)", lambda: {k: round(v, 3) for k, v in
                                                    retrieval_metrics(train_x, train_y, test_x, test_y).items()
                                                    if isinstance(v, float)})
        timed("clustering (k-means NMI/ARI)", lambda: {k: round(v, 3) for k, v in
                                                       clustering_metrics(test_x, test_y, args.classes).items()
                                                       if isinstance(v, float)})
    total = sum(r[1] for r in rows)
    ok = core < args.budget_s
    print(f"linear probe + kNN: {core:.1f} s ({'within' if ok else 'OVER'} the {args.budget_s:.0f} s budget); "
          f"all timed evaluation: {total:.1f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
