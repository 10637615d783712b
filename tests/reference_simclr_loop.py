"""A frozen, plain SimCLR pretraining loop: the reference side of tests/test_seed_identity.py.

It is the loop CRLF had before the Method redesign (commit 6727b24), written out flat with the recipes of
that time frozen here: seed everything, one permutation per epoch, two views per image, one backbone
call on both views, the projector, NT-Xent, Adam. It shares CRLF's leaf pieces only (image decoding,
the ResNet construction, the view builder, the MLP, the NT-Xent module: each has tests of its own
against slow references) and none of the machinery between them (the Method interface, the loop, the
schedule, the config's command-line path, the checkpointing). The test runs it beside `crlf pretrain`
on the same machine, so both sides round alike and must agree to the last digits: a changed constant,
learning-rate path, view order or random draw on CRLF's side shows at once, on any CPU.

The recipes are copies, not reads of configs/*.yaml: an edit of a recipe file must fail the test too.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from crlf.config import Config, apply_overrides
from crlf.data.augment import ViewSpec, build_augment
from crlf.data.sources import load_dataset
from crlf.methods.simclr import NTXentLoss
from crlf.models.backbones import build_backbone
from crlf.models.heads import mlp

_AUGMENT = {"crop_ratio": [0.75, 4 / 3], "flip_p": 0.5, "jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4,
            "saturation": 0.4, "hue": 0.1, "grayscale_p": 0.2, "blur_kernel": 3, "blur_sigma": [0.1, 2.0],
            "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
_MODEL = {"arch": "resnet18", "stem": "imagenet", "proj_hidden_dim": 256, "proj_out_dim": 64}

# The two recipes as configs/seed.yaml and configs/fast-cpu.yaml defined them at commit 6727b24.
RECIPES = {
    "seed": {"augment": {**_AUGMENT, "crop_scale": [0.2, 1.0], "blur_p": 1.0}, "model": _MODEL,
             "temperature": 0.07, "lr": 3e-4, "weight_decay": 1e-4, "low_res_epochs": 0, "low_res_size": 16},
    "fast-cpu": {"augment": {**_AUGMENT, "crop_scale": [0.35, 1.0], "blur_p": 0.0}, "model": _MODEL,
                 "temperature": 0.07, "lr": 3e-4, "weight_decay": 1e-4, "low_res_epochs": 1, "low_res_size": 16},
}
IMAGE_SIZE = 32


def reference_step_losses(data: Path, recipe: str, epochs: int, batch_size: int, seed: int = 0) -> np.ndarray:
    """Per-step losses ``(epochs * steps_per_epoch,)`` of the plain loop on the image folder ``data``'s
    train split, in fp32 on the CPU with channels_last, as `crlf pretrain --device cpu --threads 1` runs it:
    one thread (another thread count splits the sums differently) and subnormals flushed to zero."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    try:
        return _plain_loop(data, recipe, epochs, batch_size, seed)
    finally:
        torch.set_num_threads(threads)


def _plain_loop(data: Path, recipe: str, epochs: int, batch_size: int, seed: int) -> np.ndarray:
    r = RECIPES[recipe]
    augment_cfg = apply_overrides(Config(), {"augment": r["augment"]}).augment
    model_cfg = apply_overrides(Config(), {"model": r["model"]}).model
    images = torch.from_numpy(load_dataset(str(data), IMAGE_SIZE, progress=False).train.images)  # (N, 3, 32, 32)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # the weights' initialisation
    gen = torch.Generator().manual_seed(seed + 1)  # permutations and views
    backbone = build_backbone(model_cfg, IMAGE_SIZE).to(memory_format=torch.channels_last)
    projector = mlp(backbone.feature_dim, r["model"]["proj_hidden_dim"], r["model"]["proj_out_dim"])
    loss_fn = NTXentLoss(r["temperature"])
    params = [*backbone.parameters(), *projector.parameters()]
    optimizer = torch.optim.Adam(params, lr=r["lr"], weight_decay=r["weight_decay"], fused=True)
    augment = build_augment(augment_cfg, IMAGE_SIZE)
    backbone.train()
    projector.train()

    losses = []
    for epoch in range(epochs):
        perm = torch.randperm(len(images), generator=gen)
        size = r["low_res_size"] if epoch < r["low_res_epochs"] else IMAGE_SIZE
        spec = ViewSpec(size, 2, tuple(r["augment"]["crop_scale"]))
        for step in range(len(images) // batch_size):
            idx = perm[step * batch_size:(step + 1) * batch_size]  # (B,)
            v1, v2 = augment(images[idx], gen, [spec])  # (B, 3, S, S) each
            h = backbone(torch.cat([v1, v2]).contiguous(memory_format=torch.channels_last))  # (2B, 512)
            z = torch.nn.functional.normalize(projector(h), dim=1)  # (2B, 64)
            loss = loss_fn(*z.float().split(batch_size))
            losses.append(loss.item())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return np.array(losses)
