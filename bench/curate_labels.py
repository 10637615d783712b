"""Label-issue counts on the planted sets at other noise rates and kinds (issue 27).

    python bench/curate_labels.py probs --encoder trained [--cache runs/curate_sets]
    python bench/curate_labels.py report --encoder trained [--out bench/results/curate_labels.json]

Every planted set of :mod:`bench.curate_sets` flips 5 % of its labels uniformly, so a label-issue count chosen on
them cannot be told from a fixed share of the folder. Here the same images and embeddings are relabelled at
the noise levels and kinds in ``NOISE`` (fixed before any of them was scored): a clean folder, uniform flips at
1-20 %, and pair flips (class k given as k + 1, the usual model of confusable classes). ``probs`` writes each
variant's labels and out-of-fold probe probabilities, ``<cache>/<set>/labels.<noise>.npy`` and
``<encoder>.probs.<noise>.npy``; ``report`` scores the shipped rule and its candidates, each constant chosen
leave-one-noise-out (on every other noise variant), the worst held-out figure first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "bench"))
from curate_sets import CACHE, SETS, load_set  # noqa: E402

# name: (share of the clean images whose label is wrong, kind); "uniform": any other class, "pair": class k + 1
NOISE = {
    "clean": (0.0, "uniform"),
    "uniform1": (0.01, "uniform"),
    "uniform2": (0.02, "uniform"),
    "uniform10": (0.10, "uniform"),
    "uniform20": (0.20, "uniform"),
    "pair5": (0.05, "pair"),
    "pair10": (0.10, "pair"),
}


def relabel(labels: np.ndarray, truth: dict, share: float, kind: str, seed: int) -> np.ndarray:
    """The given labels ``(N,)`` with the clean images relabelled from their true class at ``share``: copies keep
    their source's given label, junk keeps its own. Copy sources are never flipped (as in curate_sets)."""
    rng = np.random.default_rng(seed)
    true = np.asarray(truth["true_label"])
    n_classes = int(labels.max()) + 1
    given = labels.copy()
    given[: len(true)] = true
    sources = {src for src, _ in truth["copies"]}
    candidates = np.array([i for i in range(len(true)) if i not in sources])
    flip = np.sort(rng.choice(candidates, int(round(share * len(true))), replace=False))
    shift = rng.integers(1, n_classes, len(flip)) if kind == "uniform" else np.ones(len(flip), dtype=np.int64)
    given[flip] = (true[flip] + shift) % n_classes
    for src, copy in truth["copies"]:
        given[copy] = given[src]
    return given


def probs(args) -> None:
    import torch

    from crlf.curate.label_issues import out_of_fold_probabilities

    torch.set_num_threads(args.threads)
    for k, spec in enumerate(SETS):
        folder = args.cache / spec.name
        if (args.sets and spec.name not in args.sets) or not (folder / f"{args.encoder}.npy").is_file():
            continue
        s = load_set(args.cache, spec.name)
        x = np.load(folder / f"{args.encoder}.npy")
        for j, (noise, (share, kind)) in enumerate(NOISE.items()):
            out = folder / f"{args.encoder}.probs.{noise}.npy"
            if out.is_file():
                continue
            given = relabel(s["labels"], s["truth"], share, kind, seed=1000 * spec.seed + j)
            np.save(folder / f"labels.{noise}.npy", given)
            t0 = time.perf_counter()
            p = out_of_fold_probabilities(x, given, int(given.max()) + 1, seed=0)
            np.save(out, p)
            print(f"{spec.name} {noise} {args.encoder}: probe {time.perf_counter() - t0:.0f} s, cross-validated "
                  f"accuracy {(p.argmax(1) == given).mean():.3f}", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["probs", "report"])
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--encoder", default="trained")
    p.add_argument("--sets", nargs="*", default=[], help="only these sets (default: all)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    (probs if args.step == "probs" else report)(args)
    return 0


def report(args) -> None:
    raise NotImplementedError


if __name__ == "__main__":
    sys.exit(main())
