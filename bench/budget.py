"""Accuracy at the budget: the full ``fast-cpu`` run, timed, then its headline evaluation.

    make bench-budget   (or: python bench/budget.py [--config configs/fast-cpu.yaml] [--budget 20] [--data ...]
                         [--out runs/budget])

Runs ``crlf pretrain --budget 20`` (whole process, data loading included) and then ``crlf evaluate`` on the
run, each timed as a whole process, and prints one markdown row: the budget plan as made at the start and as
run, the budget spent (what ``--budget`` counts: the precision probe, the steps and checkpoints) against the
20-minute target, the whole process's wall time, evaluation wall time, linear and kNN top-1. ``--budget 0``
trains the config's epochs instead. Run it alone on the machine. An existing --out is refused by
crlf (nothing is overwritten): pick a new one or delete the old run.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_S = 20 * 60


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    return time.perf_counter() - t0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/fast-cpu.yaml")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--out", type=Path, default=REPO / "runs" / "budget")
    p.add_argument("--budget", type=float, default=20.0, help="minutes of pretraining (0: the config's epochs)")
    p.add_argument("extra", nargs=argparse.REMAINDER, help="-- then more crlf pretrain flags")
    args = p.parse_args(argv)
    extra = [f for f in args.extra if f != "--"]
    crlf = [sys.executable, "-m", "crlf.cli"]
    pretrain_s = timed([*crlf, "pretrain", "--config", args.config, "--data", args.data, "--out", str(args.out),
                        "--quiet", *(["--budget", str(args.budget)] if args.budget else []), *extra])
    eval_s = timed([*crlf, "evaluate", str(args.out), "--quiet"])
    m = json.loads((args.out / "metrics.json").read_text())
    plan_path = args.out / "budget_plan.json"
    plan = json.loads(plan_path.read_text()) if plan_path.is_file() else None
    spent_s = plan["spent_s"] if plan else m["pretrain_time_s"]
    verdict = "meets" if spent_s <= TARGET_S else "misses"
    print("| config | plan at the start / as run | pretraining (budget spent) | whole process wall | "
          "evaluation wall | linear top-1 | kNN top-1 (k=200) | kNN top-1 (k=20) |")
    print("|---|---|---|---|---|---|---|---|")
    plans = f"{plan['first_plan']} / {plan['plan']['description']}" if plan else "epochs (no budget)"
    print(f"| {args.config} {' '.join(extra)} | {plans} | {spent_s / 60:.2f} min ({verdict} the 20-min target) | "
          f"{pretrain_s / 60:.1f} min | {eval_s:.0f} s | {m['linear_top1']:.2%} | {m['knn_top1']:.2%} | "
          f"{m['knn_top1_k20']:.2%} |")
    print(f"data: {m['data']}; hardware: {m['hardware']}; torch {m['torch']}; commit {m['git_commit']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
