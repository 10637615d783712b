"""Linear top-1 against pretraining time for finished runs: the picture of the CPU budget.

    python bench/budget_plot.py runs/seed runs/budget_fast1 runs/budget_fast3 --out docs/budget.png

Reads each run's metrics.json (linear top-1, summed epoch times) and config name, draws one point per run
with the 20-minute and 70 % targets of the fast CPU recipe as lines.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+")
    p.add_argument("--labels", nargs="+", help="one label per run (default: the folder names)")
    p.add_argument("--out", type=Path, default=Path("budget.png"))
    args = p.parse_args(argv)
    labels = args.labels or [r.name for r in args.runs]
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, (run, label) in enumerate(zip(args.runs, labels)):
        m = json.loads((run / "metrics.json").read_text())
        minutes, top1 = m["pretrain_time_s"] / 60, 100 * m["linear_top1"]
        ax.scatter([minutes], [top1], s=50, zorder=3)
        ax.annotate(f"{label}\n{top1:.1f} %, {minutes:.1f} min", (minutes, top1), textcoords="offset points",
                    xytext=(8, 8) if i % 2 else (8, -24), fontsize=8)
    ax.axvline(20, color="grey", linestyle="--", linewidth=1)
    ax.axhline(70, color="grey", linestyle=":", linewidth=1)
    ax.text(20.3, 41, "20-min budget", fontsize=8, color="grey")
    ax.text(1, 70.6, "70 % target", fontsize=8, color="grey")
    ax.set(xlim=(0, 45), ylim=(40, 75), xlabel="pretraining time (min, sum of epoch times), 2 CPU cores",
           ylabel="linear top-1 (%)", title="CIFAR-10 (JPEG copy), ResNet-18, 10 epochs")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
