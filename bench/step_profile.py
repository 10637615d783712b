"""Where the seconds of one pretraining step go: augmentation, forward + loss, backward, optimiser.

    python bench/step_profile.py [--config configs/fast-cpu.yaml] [--sizes 16 32] [--steps 6] [--top 8]

Runs the loop's own step (the config's augmentation, then crlf.training.step.train_step: the method's forward and
loss, backward, optimiser) on real CIFAR-10 images, times each phase over --steps steps after one warm-up step, per view
size, and prints milliseconds per phase and its share; with --top N also torch.profiler's N most expensive
operators. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def profile(config: str, data: str, size: int, steps: int, top: int) -> None:
    from crlf.config import load_config
    from crlf.data.augment import build_augment, view_specs
    from crlf.data.sources import load_dataset
    from crlf.methods.base import StepClock
    from crlf.runtime import flush_denormals
    from crlf.training.resolution import fixed_side
    from crlf.training.step import build_training_modules, train_step

    flush_denormals()  # as crlf does
    cfg = fixed_side(load_config(config))  # CIFAR-10: 32 px
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(0)
    images = torch.from_numpy(load_dataset(data, cfg.data.image_size, "error", progress=False).train.images)
    method, optimizer = build_training_modules(cfg, num_images=len(images))
    augment = build_augment(cfg.augment, cfg.data.image_size)
    specs = view_specs(cfg.augment, cfg.data.image_size, size)
    b = cfg.train.batch_size
    gen = torch.Generator().manual_seed(1)
    clock = StepClock(0.0, cfg.train.epochs)
    phases = dict.fromkeys(("augment", "forward + loss", "backward", "optimiser"), 0.0)

    def step(record: bool) -> None:
        marks = [time.perf_counter()]
        idx = torch.randint(0, len(images), (b,), generator=gen)
        views = augment(images[idx], gen, specs)  # [(B, 3, S, S)] per view
        marks.append(time.perf_counter())
        train_step(method, optimizer, views, clock, marks=marks)  # marks: forward + loss, backward, optimiser
        if record:
            for name, t0, t1 in zip(phases, marks, marks[1:]):
                phases[name] += t1 - t0

    step(False)
    for _ in range(steps):
        step(True)
    total = sum(phases.values())
    print(f"\n{config}, {size}-px views, batch {b}: {total / steps * 1000:.0f} ms per step, "
          f"{steps * b / total:.0f} pairs/s")
    print("| phase | ms per step | share |")
    print("|---|---|---|")
    for name, seconds in phases.items():
        print(f"| {name} | {seconds / steps * 1000:.0f} | {seconds / total:.0%} |")
    if top:
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            step(False)
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=top))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="configs/fast-cpu.yaml")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--sizes", type=int, nargs="+", default=[16, 32])
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--top", type=int, default=0)
    args = p.parse_args(argv)
    for size in args.sizes:
        profile(args.config, args.data, size, args.steps, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
