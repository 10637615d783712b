"""CRLF's batched augmentation against kornia.augmentation, both with per-sample parameters.

    .venv-lightly/bin/python bench/augment_speed.py [--config configs/fast-cpu.yaml] [--batch 256] [--reps 20]

Runs in the benchmark environment (`make bench-env` installs kornia there; crlf itself does not depend on
it) with crlf's source on the path. Both pipelines get the config's SimCLR augmentation (random resized
crop, flip, colour jitter with probability, grayscale, Gaussian blur, normalisation) on the same uint8 batch
of CIFAR-like images and make two views; prints milliseconds per batch (two views), views/s, and the mean
and std of the views next to the `pil` backend's (the reference's per-image torchvision pipeline), the
fidelity check. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

import kornia.augmentation as K  # noqa: E402
import torch  # noqa: E402

from crlf.config import load_config  # noqa: E402
from crlf.data.augment import PILAugment, TensorAugment  # noqa: E402
from crlf.training.resolution import fixed_side  # noqa: E402


def kornia_pipeline(cfg) -> K.AugmentationSequential:
    a, size = cfg.augment, cfg.data.image_size
    steps = [K.RandomResizedCrop((size, size), scale=a.crop_scale, ratio=a.crop_ratio),
             K.RandomHorizontalFlip(p=a.flip_p),
             K.ColorJitter(a.brightness, a.contrast, a.saturation, a.hue, p=a.jitter_p),
             K.RandomGrayscale(p=a.grayscale_p)]
    if a.blur_kernel > 1 and a.blur_p > 0:
        steps.append(K.RandomGaussianBlur((a.blur_kernel, a.blur_kernel), a.blur_sigma, p=a.blur_p))
    steps.append(K.Normalize(torch.tensor(a.mean), torch.tensor(a.std)))
    return K.AugmentationSequential(*steps)


def time_it(fn, reps: int) -> float:
    fn()  # warm-up
    t0 = time.perf_counter()
    for _ in range(reps):
        fn()
    return (time.perf_counter() - t0) / reps


def stats(views: torch.Tensor) -> list[float]:
    return [round(float(v), 3) for v in (*views.mean((0, 2, 3)), *views.std((0, 2, 3)))]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(REPO / "configs" / "fast-cpu.yaml"))
    p.add_argument("--images", help=".npy uint8 (N, 3, H, W); default: smooth random images")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--reps", type=int, default=20)
    args = p.parse_args()
    cfg = fixed_side(load_config(args.config))  # CIFAR-10: 32 px
    size = cfg.data.image_size
    if args.images:
        import numpy as np

        images = torch.from_numpy(np.load(args.images)[: args.batch])
    else:
        gen = torch.Generator().manual_seed(0)
        low = torch.rand(args.batch, 3, 8, 8, generator=gen)
        images = (torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear") * 255).to(torch.uint8)
    ours = TensorAugment(cfg.augment, size)
    theirs = kornia_pipeline(cfg)
    gen = torch.Generator().manual_seed(1)
    x = images.float() / 255

    def run_ours():
        return ours(images, gen)

    def run_kornia():
        return theirs(x), theirs(x)  # two views, per-sample parameters inside each call

    t_ours, t_kornia = time_it(run_ours, args.reps), time_it(run_kornia, args.reps)
    pil = PILAugment(cfg.augment, size)
    rows = {
        "crlf tensor": (t_ours, stats(torch.cat(run_ours()))),
        "kornia": (t_kornia, stats(torch.cat(run_kornia()))),
        "pil (reference)": (time_it(lambda: pil(images, gen), max(1, args.reps // 5)), stats(torch.cat(pil(images, gen)))),
    }
    print(f"| pipeline | ms per batch of {args.batch} (2 views) | views/s | view mean R,G,B / std R,G,B |")
    print("|---|---|---|---|")
    for name, (t, s) in rows.items():
        print(f"| {name} | {t * 1000:.1f} | {2 * args.batch / t:,.0f} | {s[:3]} / {s[3:]} |")
    print(json.dumps({"threads": torch.get_num_threads(), "torch": torch.__version__,
                      "kornia": __import__("kornia").__version__}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
