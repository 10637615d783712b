"""Does bf16 autocast cost accuracy? fp32 against bf16 at the fast-cpu recipe on the 10,000-image proxy.

    python bench/precision.py [--seeds 0 1 2] [--data ../shared/data/cifar10-jpeg.tar.gz]

For each seed, the fast-cpu recipe (10 epochs: 8 at 16 px + 2 at 32 px, Adam 3e-4, batch 256) on a
class-balanced 10,000-image subset, once with ``--precision fp32`` and once with ``--precision bf16`` (the
layout fixed to channels_last, as fast-cpu sets it, so only the precision differs); the two runs of a seed
go side by side with one thread each (bench/ablate.py: pretraining, then the linear probe and kNN fitted on
the subset's frozen features and scored on the full test split). Prints each run and the mean ± std
(sample std over seeds) of linear and kNN top-1 per precision. Runs land in runs/ablate/precision-*.
Expect: the same accuracy within the seed spread; bf16 faster on a CPU with bf16 units.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PRECISIONS = ("fp32", "bf16")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--limit", type=int, default=10000)
    args = p.parse_args(argv)
    root = REPO / "runs" / "ablate"
    for seed in args.seeds:
        jobs = []
        for precision in PRECISIONS:
            flags = ["--config", "configs/fast-cpu.yaml", "--data", args.data, "--limit", str(args.limit),
                     "--seed", str(seed), "--precision", precision]
            jobs.append(subprocess.Popen([sys.executable, str(REPO / "bench" / "ablate.py"), "--name",
                                          f"precision-{precision}-s{seed}", "--threads", "1", "--", *flags],
                                         cwd=REPO))
        for job in jobs:
            if job.wait() != 0:
                raise SystemExit(f"a run failed: {job.args}")
    rows = [json.loads(line) for line in (root / "results.jsonl").read_text().splitlines()]
    latest = {r["name"]: r for r in rows if r["name"].startswith("precision-")}  # the last row of each name
    print("\n| precision | seed | pretraining (1 thread, 2 side by side) | linear top-1 | kNN top-1 |")
    print("|---|---|---|---|---|")
    for precision in PRECISIONS:
        for seed in args.seeds:
            r = latest[f"precision-{precision}-s{seed}"]
            print(f"| {precision} | {seed} | {r['pretrain_s']:.0f} s | {r['linear_top1']:.2%} | {r['knn_top1']:.2%} |")
    print("\n| precision | linear top-1, mean ± std | kNN top-1, mean ± std | pretraining, mean |")
    print("|---|---|---|---|")
    for precision in PRECISIONS:
        runs = [latest[f"precision-{precision}-s{seed}"] for seed in args.seeds]

        def stat(key, runs=runs):
            values = [r[key] for r in runs]
            spread = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.mean(values):.2%} ± {spread:.2%}"

        print(f"| {precision} | {stat('linear_top1')} | {stat('knn_top1')} | "
              f"{statistics.mean(r['pretrain_s'] for r in runs):.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
