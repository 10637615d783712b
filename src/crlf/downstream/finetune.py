"""Opt-in, expensive: full fine-tuning of the pretrained encoder, and the same recipe from scratch.

Both train encoder + linear classifier end to end on 1 %, 10 % and 100 % of the training labels (the same
class-balanced subsets as the linear probe), with light supervised augmentation (random crop with 4-pixel
reflect padding scaled to the image size, horizontal flip; per sample) and optionally MixUp / CutMix
(torchvision.transforms.v2, one of the two per batch). The recipe is fixed in advance (AdamW, cosine
schedule, a fixed number of epochs): nothing is tuned on test, so test accuracy is reported once at the end.
The from-scratch run is the supervised baseline: what the labels alone buy without pretraining.
"""

from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from crlf.data.augment import normalize_float
from crlf.downstream.label_efficiency import FRACTIONS, fraction_key, subset_index
from crlf.models.backbones import build_backbone, load_encoder
from crlf.models.encoder import ResNetEncoder

MIX_CHOICES = ("none", "mixup", "cutmix", "both")


class Classifier(nn.Module):
    def __init__(self, encoder: ResNetEncoder, num_classes: int):
        super().__init__()
        self.encoder = encoder
        self.fc = nn.Linear(encoder.feature_dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.encoder(x))  # (B, C)


def random_crop_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Per-sample random crop (reflect padding of 1/8 of the side) and horizontal flip of float (B, 3, H, W)."""
    b, _, h, w = x.shape
    pad = max(1, h // 8)
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")  # (B, 3, H+2p, W+2p)
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)).to(x.device)  # (B, H)
    cols = (dx[:, None] + torch.arange(w)).to(x.device)  # (B, W)
    flip = (torch.rand(b, generator=generator) < 0.5).to(x.device)
    cols = torch.where(flip[:, None], cols.flip(1), cols)  # a flipped crop reads its columns backwards
    batch = torch.arange(b, device=x.device)[:, None, None]
    return padded.permute(0, 2, 3, 1)[batch, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)  # (B,3,H,W)


def build_mix(mix: str, num_classes: int):
    if mix not in MIX_CHOICES:
        raise ValueError(f"mix must be one of {MIX_CHOICES}, got {mix!r}")
    if mix == "none":
        return None
    choices = {"mixup": [v2.MixUp(num_classes=num_classes)], "cutmix": [v2.CutMix(num_classes=num_classes)],
               "both": [v2.MixUp(num_classes=num_classes), v2.CutMix(num_classes=num_classes)]}[mix]
    return v2.RandomChoice(choices)


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray, mean, std, device, batch: int = 512) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), batch):
        x = normalize_float(torch.from_numpy(images[start:start + batch]).to(device).float() / 255, mean, std)
        correct += int((model(x).argmax(1).cpu() == torch.from_numpy(labels[start:start + batch])).sum())
    return correct / max(len(images), 1)


def train_classifier(encoder: ResNetEncoder, images: np.ndarray, labels: np.ndarray, num_classes: int, mean, std,
                     device, epochs: int = 5, batch_size: int = 128, lr: float = 1e-3, encoder_lr: float | None = None,
                     weight_decay: float = 5e-4, mix: str = "both", seed: int = 0) -> nn.Module:
    """End-to-end training of encoder + linear head; ``encoder_lr`` (default ``lr``) for the backbone."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = Classifier(encoder, num_classes).to(device)
    groups = [{"params": model.encoder.parameters(), "lr": encoder_lr if encoder_lr is not None else lr},
              {"params": model.fc.parameters(), "lr": lr}]
    opt = torch.optim.AdamW(groups, weight_decay=weight_decay)
    batch_size = min(batch_size, len(images))
    steps_per_epoch = max(1, len(images) // batch_size)
    total = epochs * steps_per_epoch
    base_lrs = [g["lr"] for g in opt.param_groups]
    mixer = build_mix(mix, num_classes)
    step = 0
    for _ in range(epochs):
        model.train()
        perm = torch.randperm(len(images), generator=gen)
        for s in range(steps_per_epoch):
            idx = perm[s * batch_size:(s + 1) * batch_size].numpy()
            x = torch.from_numpy(images[idx]).to(device).float() / 255  # (B, 3, H, W) in [0, 1]
            y = torch.from_numpy(labels[idx]).to(device)  # (B,)
            x = random_crop_flip(x, gen)
            target = F.one_hot(y, num_classes).float()  # (B, C)
            if mixer is not None and len(x) > 1:
                x, target = mixer(x, y)  # soft targets (B, C)
            for g, base in zip(opt.param_groups, base_lrs):  # cosine decay to 0
                g["lr"] = base * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = torch.sum(-target * F.log_softmax(model(normalize_float(x, mean, std)), 1), 1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    return model.eval()


def finetune_label_fractions(make_encoder, train_images: np.ndarray, train_labels: np.ndarray,
                             test_images: np.ndarray, test_labels: np.ndarray, num_classes: int, mean, std, device,
                             fractions=FRACTIONS, epochs: int = 5, mix: str = "both", seed: int = 0,
                             encoder_lr: float | None = None, lr: float = 1e-3) -> dict:
    """Train one classifier per label fraction, each from ``make_encoder()`` (fresh weights every time)."""
    out = {}
    for fraction in fractions:
        t0 = time.perf_counter()
        idx = subset_index(train_labels, fraction, num_classes, seed)
        model = train_classifier(make_encoder(), train_images[idx], train_labels[idx], num_classes, mean, std,
                                 device, epochs=epochs, mix=mix, seed=seed, encoder_lr=encoder_lr, lr=lr)
        out[fraction_key(fraction)] = {"fraction": fraction, "num_labels": int(len(idx)),
                                       "top1": accuracy(model, test_images, test_labels, mean, std, device),
                                       "time_s": round(time.perf_counter() - t0, 1)}
    return {"fractions": out, "epochs": epochs, "mix": mix, "optimizer": "AdamW, cosine schedule",
            "lr": lr, "encoder_lr": encoder_lr if encoder_lr is not None else lr, "seed": seed,
            "augment": "random crop (reflect pad) + flip" + ("" if mix == "none" else f" + {mix}")}


def finetune_metrics(run_dir, cfg, train, test, num_classes: int, device, finetune: bool = True,
                     supervised_baseline: bool = False, epochs: int = 5, mix: str = "both") -> dict:
    """{"finetune": ..., "supervised_baseline": ...} for metrics.json, as requested by the flags."""
    mean, std = cfg.augment.mean, cfg.augment.std
    common = dict(train_images=train.images, train_labels=train.labels, test_images=test.images,
                  test_labels=test.labels, num_classes=num_classes, mean=mean, std=std, device=device,
                  epochs=epochs, mix=mix, seed=cfg.train.seed)
    out = {}
    if finetune:  # the pretrained backbone moves 10x slower than the new head, so it is adapted, not erased
        out["finetune"] = finetune_label_fractions(lambda: load_encoder(run_dir).to(device),
                                                   encoder_lr=1e-4, **common)
    if supervised_baseline:
        out["supervised_baseline"] = finetune_label_fractions(
            lambda: build_backbone(cfg.model, cfg.data.image_size).to(device), **common)
    return out
