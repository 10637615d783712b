"""How many of a checkpoint's weights are subnormal floats, and what they cost a training step on the CPU.

    python bench/subnormals.py RUN/checkpoint.pt [--size 16] [--steps 4]

Counts the encoder weights below float32's smallest normal number (1.18e-38), then times forward,
backward and optimiser step of that checkpoint (its model, head and Adam state, batch of its config, random
views of --size px) twice, each in a fresh process: with subnormals flushed to zero (what crlf does,
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
    from crlf.config import Config, apply_overrides
    from crlf.methods.simclr import NTXentLoss
    from crlf.train import build_training_modules

    ck = torch.load(checkpoint, weights_only=True, map_location="cpu")
    cfg = apply_overrides(Config(), ck["config"])
    b = cfg.train.batch_size
    encoder, head, optimizer = build_training_modules(cfg)
    encoder.load_state_dict(ck["encoder"])
    head.load_state_dict(ck["head"])
    optimizer.load_state_dict(ck["optimizer"])
    loss_fn = NTXentLoss(cfg.method.temperature)
    views = torch.randn(2 * b, 3, size, size, generator=torch.Generator().manual_seed(0))  # (2B, 3, S, S)
    if cfg.train.channels_last:
        views = views.contiguous(memory_format=torch.channels_last)
    spent = [0.0, 0.0, 0.0]
    for i in range(steps + 1):  # the first step is a warm-up
        t0 = time.perf_counter()
        z = head(encoder(views))  # (2B, D)
        loss = loss_fn(z[:b], z[b:])
        t1 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        optimizer.step()
        t3 = time.perf_counter()
        if i:
            spent = [spent[0] + t1 - t0, spent[1] + t2 - t1, spent[2] + t3 - t2]
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
    import torch

    weights = torch.load(args.checkpoint, weights_only=True, map_location="cpu")["encoder"]
    floats = [w for w in weights.values() if w.is_floating_point()]
    subnormal = sum(int(((w != 0) & (w.abs() < SMALLEST_NORMAL)).sum()) for w in floats)
    total = sum(w.numel() for w in floats)
    print(f"subnormal encoder weights: {subnormal:,} of {total:,} ({subnormal / total:.0%})")
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
