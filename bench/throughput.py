"""Pretraining throughput of CRLF against Lightly SSL and the bare model's compute bound, in one run.

    make bench   (or: python bench/throughput.py [--data ...] [--configs configs/fast-cpu.yaml configs/seed.yaml]
                  [--lightly-python .venv-lightly/bin/python])

For each config, at its full view size (progressive resizing off, so every row has the same shapes):
(a) the real training loop, ``crlf pretrain`` on a class-balanced subset for two epochs, reading the warm
second epoch's images/s from metrics.jsonl (one image = one pair of views: augmentation, backbone on both
views, the method's heads and loss, optimiser step); (b) Lightly SSL's SimCLR as its docs show it (bench/lightly_simclr.py,
run in the separate environment `make bench-env` builds: SimCLRTransform per image, a DataLoader with 2
workers, SimCLRProjectionHead, NTXentLoss) on the same torchvision ResNet-18, batch, view size, head widths
and optimiser; (c) the bound: the same training step (``crlf.step.train_step``: method + optimiser) fed random float views
of the same shapes (no augmentation, no data). Prints each, the ratios crlf/Lightly and crlf/bound, and peak resident memory.
Run it alone on the machine: a second CPU-heavy process distorts it.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bound(config: str, steps: int, warmup: int) -> None:
    """Child process: time the bare step on random views; print one JSON line."""
    import torch

    from crlf.config import load_config
    from crlf.data.augment import view_specs
    from crlf.methods.base import StepClock
    from crlf.runtime import flush_denormals, resolve_device
    from crlf.step import train_step
    from crlf.train import autocast_dtype, build_training_modules

    flush_denormals()  # as crlf does
    cfg = load_config(config)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    torch.manual_seed(0)
    method, optimizer = build_training_modules(cfg, device)
    if cfg.train.compile:
        method.compile_backbone()  # compiled in the warm-up
    b = cfg.train.batch_size
    views = [torch.randn(b, 3, spec.size, spec.size, device=device)  # (B, 3, S, S) per view, as in training
             for spec in view_specs(cfg.augment, cfg.data.image_size) for _ in range(spec.count)]
    autocast = autocast_dtype(cfg.train.precision, device)
    clock = StepClock(0.0, cfg.train.epochs)
    for i in range(warmup + steps):
        if i == warmup:
            _synchronize(device)
            t0 = time.perf_counter()
        train_step(method, optimizer, views, clock, autocast)
    _synchronize(device)
    pairs_per_s = steps * b / (time.perf_counter() - t0)
    print(json.dumps({"pairs_per_s": pairs_per_s,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _synchronize(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def real_loop(config: str, data: str, steps_per_epoch: int) -> dict:
    cfg_batch = _batch_size(config)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        cmd = [sys.executable, "-m", "crlf.cli", "pretrain", "--config", config, "--data", data, "--out", str(run),
               "--epochs", "2", "--limit", str(steps_per_epoch * cfg_batch), "--quiet",
               "--set", "train.low_res_epochs=0", "--set", "train.eval_every=0"]
        subprocess.run(cmd, check=True, cwd=REPO)
        history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"pairs_per_s": history[-1]["images_per_s"], "peak_rss_mb": peak}


def _batch_size(config: str) -> int:
    from crlf.config import load_config

    return load_config(config).train.batch_size


def lightly(config: str, data: str, lightly_python: str, steps: int, warmup: int, workers: int) -> dict:
    """Lightly's SimCLR on the config's images and settings, in its own environment (a subprocess)."""
    import numpy as np

    from crlf.config import load_config
    from crlf.data.sources import balanced_subset, load_dataset

    cfg = load_config(config)
    if cfg.optim.name != "adam":
        raise SystemExit(f"{config}: the Lightly comparison mirrors Adam only (got optim.name={cfg.optim.name})")
    dataset = load_dataset(data, cfg.data.image_size, "error", progress=False)
    train = balanced_subset(dataset.train, (warmup + steps + 2) * cfg.train.batch_size, seed=0)
    settings = {"image_size": cfg.data.image_size, "batch_size": cfg.train.batch_size,
                "temperature": cfg.method.temperature, "lr": cfg.optim.lr, "weight_decay": cfg.optim.weight_decay,
                "augment": {k: getattr(cfg.augment, k) for k in ("jitter_p", "brightness", "contrast", "saturation",
                                                                 "hue", "crop_scale", "grayscale_p", "blur_p",
                                                                 "blur_sigma", "flip_p", "mean", "std")},
                "model": {k: getattr(cfg.model, k) for k in ("proj_hidden_dim", "proj_out_dim", "proj_batchnorm")}}
    with tempfile.TemporaryDirectory() as tmp:
        images = Path(tmp) / "images.npy"
        np.save(images, train.images)
        out = subprocess.run([lightly_python, str(REPO / "bench" / "lightly_simclr.py"), "--images", str(images),
                              "--config-json", json.dumps(settings), "--steps", str(steps), "--warmup", str(warmup),
                              "--workers", str(workers)], check=True, capture_output=True, text=True, cwd=REPO)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"))
    p.add_argument("--configs", nargs="+", default=["configs/fast-cpu.yaml", "configs/seed.yaml"])
    p.add_argument("--lightly-python", help="python of the Lightly environment (make bench-env); omit to skip it")
    p.add_argument("--lightly-workers", type=int, default=2, help="DataLoader workers for Lightly (default 2)")
    p.add_argument("--steps", type=int, default=20, help="timed steps of the bound")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--steps-per-epoch", type=int, default=30, help="steps per epoch of the real loop")
    p.add_argument("--bound-only", metavar="CONFIG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bound_only:
        bound(args.bound_only, args.steps, args.warmup)
        return 0
    rows = []
    for config in args.configs:
        loop = real_loop(config, args.data, args.steps_per_epoch)
        out = subprocess.run([sys.executable, __file__, "--bound-only", config, "--steps", str(args.steps),
                              "--warmup", str(args.warmup)], check=True, capture_output=True, text=True, cwd=REPO)
        b = json.loads(out.stdout.strip().splitlines()[-1])
        lt = None
        if args.lightly_python:
            lt = lightly(config, args.data, args.lightly_python, 2 * args.steps_per_epoch, args.warmup,
                         args.lightly_workers)
        rows.append((config, loop, b, lt))
    print("| config | crlf pairs/s | Lightly pairs/s | bound pairs/s | crlf / Lightly | crlf / bound "
          "| peak RSS crlf / Lightly / bound |")
    print("|---|---|---|---|---|---|---|")
    for config, loop, b, lt in rows:
        lt_rate = f"{lt['pairs_per_s']:.0f}" if lt else "—"
        lt_ratio = f"{loop['pairs_per_s'] / lt['pairs_per_s']:.2f}" if lt else "—"
        lt_mem = f"{lt['peak_rss_mb']:.0f} MB" if lt else "—"
        print(f"| {config} | {loop['pairs_per_s']:.0f} | {lt_rate} | {b['pairs_per_s']:.0f} | {lt_ratio} | "
              f"{loop['pairs_per_s'] / b['pairs_per_s']:.2f} | {loop['peak_rss_mb']:.0f} MB / {lt_mem} / "
              f"{b['peak_rss_mb']:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
