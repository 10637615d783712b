"""Pretraining throughput of CRLF against Lightly SSL and the bare model's compute bound, in one run.

    make bench   (or: python bench/throughput.py [--data ...] [--configs configs/fast-cpu.yaml configs/seed.yaml]
                  [--lightly-python .venv-lightly/bin/python])

For each config, at its full view size (progressive resizing off, so every row has the same shapes):
(a) the real training loop, ``crlf pretrain`` on a class-balanced subset for two epochs, reading the warm
second epoch's images/s from metrics.jsonl (one image = one pair of views: augmentation, backbone on both
views, the method's heads and loss, optimiser step); (b) Lightly SSL's SimCLR as its docs show it (bench/lightly_simclr.py,
run in the separate environment `make bench-env` builds: SimCLRTransform per image, a DataLoader with 2
workers, SimCLRProjectionHead, NTXentLoss) on the same torchvision ResNet-18, batch, view size, head widths
and optimiser; (c) CRLF's own step (``crlf.training.step.train_step``: method + optimiser) fed random float views of the same shapes
(no augmentation, no data); (d) the plain-model bound: a plain torchvision ResNet-18 with the same head, loss
and fused Adam on random views, the best of fp32, bf16 autocast, and each with channels_last. Prints each,
the ratios crlf/Lightly and crlf/plain bound, and peak resident memory. The real loop runs the config's
precision (fast-cpu: auto, the probe's choice for this machine).
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
    from crlf.training.precision import autocast_dtype
    from crlf.training.resolution import fixed_side
    from crlf.training.step import build_training_modules, train_step

    flush_denormals()  # as crlf does
    cfg = fixed_side(load_config(config))  # CIFAR-10: 32 px
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    device = resolve_device(cfg.train.device)
    b = cfg.train.batch_size
    views = [torch.randn(b, 3, spec.size, spec.size, device=device)  # (B, 3, S, S) per view, as in training
             for spec in view_specs(cfg.augment, cfg.data.image_size) for _ in range(spec.count)]
    if cfg.train.precision == "auto":  # the probe's choice for this machine, as the real loop makes it (cached)
        from dataclasses import replace

        from crlf.training.precision import resolve_precision

        size = view_specs(cfg.augment, cfg.data.image_size)[0].size
        choice = resolve_precision(cfg, device, [size], need_timings=False, batch_size=cfg.train.batch_size,
                                   num_images=50000, log=None)
        if choice is not None:
            s = choice.setting
            cfg = replace(cfg, train=replace(cfg.train, precision=s.precision, channels_last=s.channels_last))
    autocast = autocast_dtype(cfg.train.precision, device)
    torch.manual_seed(0)
    method, optimizer = build_training_modules(cfg, device)
    if cfg.train.compile:
        method.compile_backbone()  # compiled in the warm-up
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


PLAIN_SETTINGS = (("fp32", False), ("fp32", True), ("bf16", False), ("bf16", True))


def plain_bound(config: str, steps: int, warmup: int) -> None:
    """Child process: the plain-model bound, a torchvision ResNet-18 (the config's stem) with the config's
    projection head and NT-Xent loss and fused Adam, on random views of the same shapes: what a
    hand-written loop with no data and no CRLF code reaches. Timed in fp32 and bf16 autocast, each with and
    without channels_last, interleaved; prints one JSON line with every setting's pairs/s and the best."""
    import torch
    import torchvision

    from crlf.config import load_config
    from crlf.data.augment import view_specs
    from crlf.methods.simclr import NTXentLoss
    from crlf.models.heads import ProjectionHead
    from crlf.runtime import flush_denormals
    from crlf.training.resolution import fixed_side

    flush_denormals()  # as crlf does: a fair bound
    cfg = fixed_side(load_config(config))  # CIFAR-10: 32 px
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(0)
    m, b = cfg.model, cfg.train.batch_size
    models = {}
    for precision, channels_last in PLAIN_SETTINGS:
        net = getattr(torchvision.models, m.arch)(weights=None)
        if m.stem == "cifar":
            net.conv1 = torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False)
            net.maxpool = torch.nn.Identity()
        dim = net.fc.in_features
        net.fc = torch.nn.Identity()
        head = ProjectionHead(dim, m.proj_hidden_dim, m.proj_out_dim, batchnorm=m.proj_batchnorm)
        model = torch.nn.Sequential(net, head)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.optim.lr, weight_decay=cfg.optim.weight_decay, fused=True)
        models[(precision, channels_last)] = (model, opt)
    loss_fn = NTXentLoss(cfg.method.temperature)
    spec = view_specs(cfg.augment, cfg.data.image_size)[0]
    x = torch.randn(2 * b, 3, spec.size, spec.size)  # (2B, 3, S, S): both views in one call
    elapsed = {k: 0.0 for k in models}
    for i in range(warmup + steps):
        for (precision, channels_last), (model, opt) in models.items():
            xi = x.contiguous(memory_format=torch.channels_last) if channels_last else x
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
                z = model(xi)  # (2B, D)
            loss = loss_fn(*z.float().chunk(2))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= warmup:
                elapsed[(precision, channels_last)] += time.perf_counter() - t0
    rates = {f"{p}{' + channels_last' if cl else ''}": steps * b / t for (p, cl), t in elapsed.items()}
    best = max(rates, key=rates.get)
    print(json.dumps({"pairs_per_s": rates[best], "best": best, "settings": rates,
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
        meta = json.loads((run / "config.json").read_text())
    probe = meta.get("precision_probe")  # precision auto: what the probe chose for this machine
    precision = (probe["precision"] + (" + channels_last" if probe["channels_last"] else "")) if probe else "as set"
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return {"pairs_per_s": history[-1]["images_per_s"], "peak_rss_mb": peak, "precision": precision}


def _batch_size(config: str) -> int:
    from crlf.config import load_config

    return load_config(config).train.batch_size


def lightly(config: str, data: str, lightly_python: str, steps: int, warmup: int, workers: int) -> dict:
    """Lightly's SimCLR on the config's images and settings, in its own environment (a subprocess)."""
    import numpy as np

    from crlf.config import load_config
    from crlf.data.sources import balanced_subset, load_dataset
    from crlf.training.resolution import fixed_side

    cfg = fixed_side(load_config(config))  # CIFAR-10: 32 px
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
    p.add_argument("--plain-bound-only", metavar="CONFIG", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bound_only:
        bound(args.bound_only, args.steps, args.warmup)
        return 0
    if args.plain_bound_only:
        plain_bound(args.plain_bound_only, args.steps, args.warmup)
        return 0

    def child(flag: str, config: str) -> dict:
        out = subprocess.run([sys.executable, __file__, flag, config, "--steps", str(args.steps),
                              "--warmup", str(args.warmup)], check=True, capture_output=True, text=True, cwd=REPO)
        return json.loads(out.stdout.strip().splitlines()[-1])

    rows = []
    for config in args.configs:
        loop = real_loop(config, args.data, args.steps_per_epoch)
        b, plain = child("--bound-only", config), child("--plain-bound-only", config)
        lt = None
        if args.lightly_python:
            lt = lightly(config, args.data, args.lightly_python, 2 * args.steps_per_epoch, args.warmup,
                         args.lightly_workers)
        rows.append((config, loop, b, plain, lt))
    print("| config | crlf loop pairs/s (precision) | Lightly pairs/s | crlf step on random views | plain ResNet "
          "step, best of 4 | crlf / Lightly | crlf / plain bound | crlf / own step | peak RSS crlf / Lightly |")
    print("|---|---|---|---|---|---|---|---|---|")
    for config, loop, b, plain, lt in rows:
        lt_rate = f"{lt['pairs_per_s']:.0f}" if lt else "—"
        lt_ratio = f"{loop['pairs_per_s'] / lt['pairs_per_s']:.2f}" if lt else "—"
        lt_mem = f"{lt['peak_rss_mb']:.0f} MB" if lt else "—"
        print(f"| {config} | {loop['pairs_per_s']:.0f} ({loop['precision']}) | {lt_rate} | {b['pairs_per_s']:.0f} "
              f"| {plain['pairs_per_s']:.0f} ({plain['best']}) | {lt_ratio} | "
              f"{loop['pairs_per_s'] / plain['pairs_per_s']:.2f} | {loop['pairs_per_s'] / b['pairs_per_s']:.2f} | "
              f"{loop['peak_rss_mb']:.0f} MB / {lt_mem} |")
    for config, _, _, plain, _ in rows:
        print(f"plain bound, {config}: " + ", ".join(f"{k} {v:.0f}" for k, v in plain["settings"].items())
              + " pairs/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
