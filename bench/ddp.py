"""Pretraining throughput with 1 process against 2 (DistributedDataParallel, gloo) on this CPU.

    python bench/ddp.py [--config configs/fast-cpu.yaml] [--data ...] [--limit 2048] [--epochs 2]

Runs the real loop, ``crlf pretrain`` on a class-balanced subset at the full view size (progressive resizing
off), once in one process (torch's threads on every core) and once with ``--nproc 2`` (torch's elastic
launcher; each process takes its share of the cores), with the same global batch. Reads the warm last
epoch's images/s from metrics.jsonl (one image = one pair of views) and prints one markdown row per run.

What to expect on this machine (2 shared cores): no gain. Two processes of one thread each do the same
arithmetic as one process of two threads, and add the gradient all-reduce (ResNet-18: 11 M floats per step
over gloo), the gathers of the loss and a second copy of the data and of the model. Several processes pay off
with one device each: bench/ddp_gpu.sh measures that on a multi-GPU machine.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(nproc: int, args, out: Path) -> dict:
    cmd = [sys.executable, "-m", "crlf", "pretrain", "--config", args.config, "--data", args.data,
           "--limit", str(args.limit), "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
           "--device", "cpu", "--out", str(out), "--quiet", "--set", "train.low_res_epochs=0",
           "--set", "train.eval_every=0"]
    if nproc > 1:
        cmd += ["--nproc", str(nproc)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=REPO)
    wall = time.perf_counter() - t0
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    return {"pairs_s": last["images_per_s"], "wall_s": wall, "loss": last["loss"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/fast-cpu.yaml")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--limit", type=int, default=2048)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=256)
    args = p.parse_args(argv)
    rows, load = [], os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="crlf-ddp-bench-") as tmp:
        for nproc in (1, 2):
            rows.append((nproc, run(nproc, args, Path(tmp) / f"n{nproc}")))
    base = rows[0][1]["pairs_s"]
    print(f"\n{datetime.date.today()}, {platform.processor() or platform.machine()}; {args.config}, "
          f"{args.limit} images, batch {args.batch_size} (global), 32-px views, epoch {args.epochs} of {args.epochs}; "
          f"load average {load:.1f} before, {os.getloadavg()[0]:.1f} after (other work on the machine distorts it)")
    print("| processes | batch per process | pairs/s (warm epoch) | vs 1 process | whole run, wall |")
    print("|---|---|---|---|---|")
    for nproc, r in rows:
        print(f"| {nproc} | {args.batch_size // nproc} | {r['pairs_s']:.1f} | {r['pairs_s'] / base:.2f}x | "
              f"{r['wall_s']:.0f} s |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
