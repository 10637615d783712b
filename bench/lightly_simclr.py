"""Lightly SSL's SimCLR, as its documentation shows it, timed on the same images, model and batch as CRLF.

Runs inside the separate benchmark environment (`make bench-env` -> .venv-lightly; it never imports
crlf), called by bench/throughput.py:

    .venv-lightly/bin/python bench/lightly_simclr.py --images subset.npy --config-json '{...}'

Pipeline (Lightly's docs, "SimCLR" example): a map-style dataset of PIL images with
``SimCLRTransform`` (per-image torchvision transforms, two views), a ``DataLoader`` with worker
processes, ``SimCLRProjectionHead`` + ``NTXentLoss`` on a torchvision ResNet-18 backbone. The
transform's parameters are set to the CRLF config's (crop scale, colour strengths, grayscale, blur),
the head to its widths, the optimiser to Adam with its learning rate. Prints one JSON line: pairs/s over
the timed steps (after warm-up) and peak resident memory of this process and its workers.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch
import torchvision
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead
from lightly.transforms import SimCLRTransform
from PIL import Image
from torch import nn


class ImageArrayDataset(torch.utils.data.Dataset):
    """uint8 ``(N, 3, H, W)`` array -> (PIL image -> transform) items, as a folder dataset would give."""

    def __init__(self, images: np.ndarray, transform):
        self.images = images.transpose(0, 2, 3, 1)  # (N, H, W, 3)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        return self.transform(Image.fromarray(np.ascontiguousarray(self.images[i]))), 0


class SimCLR(nn.Module):
    def __init__(self, backbone: nn.Module, feature_dim: int, hidden_dim: int, out_dim: int, batchnorm: bool):
        super().__init__()
        self.backbone = backbone
        self.projection_head = SimCLRProjectionHead(feature_dim, hidden_dim, out_dim, batch_norm=batchnorm)

    def forward(self, x):
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--images", required=True, help=".npy of uint8 (N, 3, H, W)")
    p.add_argument("--config-json", required=True, help="the CRLF config's relevant keys, as JSON")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    args = p.parse_args()
    cfg = json.loads(args.config_json)
    a, m = cfg["augment"], cfg["model"]
    images = np.load(args.images)
    transform = SimCLRTransform(
        input_size=cfg["image_size"], cj_prob=a["jitter_p"], cj_strength=1.0, cj_bright=a["brightness"],
        cj_contrast=a["contrast"], cj_sat=a["saturation"], cj_hue=a["hue"], min_scale=a["crop_scale"][0],
        random_gray_scale=a["grayscale_p"], gaussian_blur=a["blur_p"], sigmas=tuple(a["blur_sigma"]),
        hf_prob=a["flip_p"], normalize={"mean": a["mean"], "std": a["std"]})
    loader = torch.utils.data.DataLoader(
        ImageArrayDataset(images, transform), batch_size=cfg["batch_size"], shuffle=True, drop_last=True,
        num_workers=args.workers, persistent_workers=args.workers > 0)
    resnet = torchvision.models.resnet18()
    backbone = nn.Sequential(*list(resnet.children())[:-1])  # Lightly's example: the ResNet without its fc
    model = SimCLR(backbone, 512, m["proj_hidden_dim"], m["proj_out_dim"], m["proj_batchnorm"])
    criterion = NTXentLoss(temperature=cfg["temperature"])
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    model.train()
    done, t0 = 0, None
    while done < args.warmup + args.steps:
        for (x0, x1), _ in loader:
            if done == args.warmup:
                t0 = time.perf_counter()
            z0, z1 = model(x0), model(x1)  # Lightly's example: one forward per view
            loss = criterion(z0, z1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            done += 1
            if done == args.warmup + args.steps:
                break
    pairs_per_s = args.steps * cfg["batch_size"] / (time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 + _workers_peak_mb(loader)
    print(json.dumps({"pairs_per_s": pairs_per_s, "peak_rss_mb": peak, "lightly": _version()}))
    return 0


def _workers_peak_mb(loader) -> float:
    """Peak RSS of the (still running, persistent) DataLoader workers, from /proc."""
    total = 0.0
    for worker in getattr(getattr(loader, "_iterator", None), "_workers", []):
        try:
            status = open(f"/proc/{worker.pid}/status").read()
        except OSError:
            continue
        total += next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmHWM")), 0)
    return total


def _version() -> str:
    from importlib.metadata import version

    return version("lightly")


if __name__ == "__main__":
    raise SystemExit(main())
