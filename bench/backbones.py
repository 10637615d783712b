"""Backbones on this CPU at 32 px: pairs/s of the training step against the bare backbone's bound, and memory.

    python bench/backbones.py [--archs resnet18 vit_tiny ...] [--batch 64] [--steps 2] [--rounds 3] [--threads 1]

For each ``model.arch`` (configs/fast-cpu.yaml with ``--set model.arch=ARCH``: SimCLR, its 256 -> 64 head, Adam,
channels-last; progressive resizing off so every view is 32 px), in its own process:

- **real**: the step the loop runs: batched augmentation of random uint8 images into two 32-px views, then
  ``crlf.training.step.train_step`` (backbone on both views in one call, head, NT-Xent, backward, optimiser step);
- **step**: ``train_step`` alone, on random float views (no augmentation);
- **bound**: the bare backbone, forward + backward of ``(x ** 2).mean()`` on ``2 x batch`` random images in the
  same memory layout: no head, no loss, no optimiser; what the step cannot beat.

One pair = one image's two views. The three are timed in turn, ``--rounds`` times (``--steps`` steps each after
``--warmup``), and each keeps its best round: on a CPU shared with other work, the least disturbed one, and
every kind gets the same chances of a quiet moment. Prints a markdown table: pairs/s of each, real / bound, the
backbone's parameters and feature width, and the process's peak resident memory. Read the ratios, not the
absolute figures, from a loaded machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIG = REPO / "configs" / "fast-cpu.yaml"
ARCHS = ["resnet18", "resnet34", "resnet50", "vit_tiny", "vit_small", "timm:resnet10t"]


def child(arch: str, batch: int, steps: int, warmup: int, threads: int, rounds: int) -> None:
    """Time one arch; print one JSON line."""
    import torch

    from crlf.config import load_config
    from crlf.data.augment import build_augment, view_specs
    from crlf.methods.base import StepClock
    from crlf.runtime import flush_denormals
    from crlf.training.resolution import fixed_side
    from crlf.training.step import build_training_modules, train_step

    flush_denormals()  # as crlf does
    if threads:
        torch.set_num_threads(threads)
    cfg = fixed_side(load_config(CONFIG, {"model": {"arch": arch}, "train": {"low_res_epochs": 0, "batch_size": batch}}))
    torch.manual_seed(0)
    method, optimizer = build_training_modules(cfg, "cpu", num_images=10 * batch)
    backbone = method.backbone
    memory_format = torch.channels_last if cfg.train.channels_last else torch.contiguous_format
    clock = StepClock(0.0, cfg.train.epochs)

    def timed(step) -> float:  # pairs/s over `steps` steps
        t0 = time.perf_counter()
        for _ in range(steps):
            step()
        return steps * batch / (time.perf_counter() - t0)

    x = torch.randn(2 * batch, 3, 32, 32).contiguous(memory_format=memory_format)  # (2B, 3, 32, 32): both views

    def bare():
        backbone.zero_grad(set_to_none=True)
        (backbone(x) ** 2).mean().backward()

    views = list(x.split(batch))  # [(B, 3, 32, 32)] x 2
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8)
    augment = build_augment(cfg.augment, cfg.data.image_size)
    specs = view_specs(cfg.augment, cfg.data.image_size)
    gen = torch.Generator().manual_seed(1)
    method.train()
    kinds = {"bound": bare, "step": lambda: train_step(method, optimizer, views, clock),
             "real": lambda: train_step(method, optimizer, augment(images, gen, specs), clock)}
    for step in kinds.values():
        for _ in range(warmup):
            step()
    best = {kind: timed(step) for kind, step in kinds.items()}
    for _ in range(rounds - 1):  # interleaved: load that comes and goes reaches every kind alike
        best = {kind: max(best[kind], timed(step)) for kind, step in kinds.items()}
    result = {"arch": arch, **best,
              "params_m": sum(p.numel() for p in backbone.parameters()) / 1e6, "feature_dim": backbone.feature_dim,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "threads": torch.get_num_threads(), "rounds": rounds}
    print(json.dumps(result))


def table(rows: list[dict], batch: int) -> str:
    lines = ["| backbone | params (M) | features | real pairs/s | step pairs/s | bound pairs/s | real / bound "
             "| peak RSS (MB) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['arch']} | {r['params_m']:.1f} | {r['feature_dim']} | {r['real']:.1f} | {r['step']:.1f} "
                     f"| {r['bound']:.1f} | {r['real'] / r['bound']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines.append(f"\nbatch {batch} pairs (2 x {batch} images of 32 px per step), {rows[0]['threads']} torch "
                 f"thread(s); each column the best of {rows[0]['rounds']} interleaved rounds")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archs", nargs="+", default=ARCHS)
    parser.add_argument("--batch", type=int, default=64, help="pairs per step")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds; each kind keeps its best")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.batch, args.steps, args.warmup, args.threads, args.rounds)
        return
    rows = []
    for arch in args.archs:  # one process per arch: its own peak RSS, no allocator state carried over
        cmd = [sys.executable, __file__, "--child", arch, "--batch", str(args.batch), "--steps", str(args.steps),
               "--warmup", str(args.warmup), "--threads", str(args.threads), "--rounds", str(args.rounds)]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=REPO)
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"{arch}: {rows[-1]['real']:.1f} pairs/s real, {rows[-1]['bound']:.1f} bound "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    print(table(rows, args.batch))


if __name__ == "__main__":
    main()
