"""How many of a checkpoint's weights are subnormal floats, and what they cost a training step on the CPU.

    python bench/subnormals.py RUN/checkpoint.pt [--size 16] [--steps 4]

Counts the backbone weights below float32's smallest normal number (1.18e-38), then times forward,
backward and optimiser step of that checkpoint (its method, heads and optimiser state, batch of its config,
random views of --size px, crlf.training.step.train_step) twice, each in a fresh process: with subnormals flushed to zero (what crlf does,
`crlf.runtime.flush_denormals`, set before torch's thread pool starts) and without. Run it alone.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

SMALLEST_NORMAL = 1.1754944e-38


def child(checkpoint: str, size: int, steps: int, flush: bool) -> None:
    import torch

    torch.set_flush_denormal(flush)  # first, before any parallel torch op creates the thread pool
    from pathlib import Path

    from crlf.config import Config, apply_overrides
    from crlf.methods.base import StepClock
    from crlf.training.checkpoint import load_checkpoint_file
    from crlf.training.step import build_training_modules, train_step

    ck = load_checkpoint_file(Path(checkpoint))
    cfg = apply_overrides(Config(), ck["config"])
    b = cfg.train.batch_size
    method, optimizer = build_training_modules(cfg)
    method.load_state_dict(ck["method"])
    optimizer.load_state_dict(ck["optimizer"])
    gen = torch.Generator().manual_seed(0)
    views = [torch.randn(b, 3, size, size, generator=gen) for _ in range(2)]  # (B, 3, S, S) twice
    clock = StepClock(ck["progress"]["epoch"], cfg.train.epochs)
    spent = [0.0, 0.0, 0.0]
    for i in range(steps + 1):  # the first step is a warm-up
        marks = [time.perf_counter()]
        train_step(method, optimizer, views, clock, marks=marks)  # marks: forward, backward, optimiser done
        if i:
            spent = [s + t1 - t0 for s, t0, t1 in zip(spent, marks, marks[1:])]
    print(json.dumps({"flush": flush, "ms": [round(s / steps * 1000) for s in spent]}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--child", choices=["0", "1"], help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args.checkpoint, args.size, args.steps, args.child == "1")
        return 0
    from pathlib import Path

    from crlf.training.checkpoint import load_checkpoint_file

    weights = load_checkpoint_file(Path(args.checkpoint))["method"]
    floats = [w for k, w in weights.items() if k.startswith("backbone.") and w.is_floating_point()]
    subnormal = sum(int(((w != 0) & (w.abs() < SMALLEST_NORMAL)).sum()) for w in floats)
    total = sum(w.numel() for w in floats)
    print(f"subnormal backbone weights: {subnormal:,} of {total:,} ({subnormal / total:.0%})")
    print(f"| subnormals | forward ms | backward ms | optimiser ms | ({args.size}-px random views) |")
    print("|---|---|---|---|---|")
    for flag, name in (("0", "kept"), ("1", "flushed to zero")):
        out = subprocess.run([sys.executable, __file__, args.checkpoint, "--size", str(args.size), "--steps",
                              str(args.steps), "--child", flag], check=True, capture_output=True, text=True)
        ms = json.loads(out.stdout.strip().splitlines()[-1])["ms"]
        print(f"| {name} | {ms[0]} | {ms[1]} | {ms[2]} | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
