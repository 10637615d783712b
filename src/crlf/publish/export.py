"""Published artefacts: encoder weights (safetensors + config.json, and a plain ``.pth`` state dict for
the reference's loading snippet) and embeddings as ``.npy``. Every write is atomic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save as safetensors_bytes

from crlf.config import Config
from crlf.io import atomic_save_with, atomic_write_bytes, atomic_write_json
from crlf.models.backbones import backbone_spec, published_state_dict


def plain_pth_name(cfg: Config) -> str:
    # "timm:resnet10t" -> "timm-resnet10t": no colon in a file name (Windows, and scp's host:path)
    return f"encoder_{cfg.model.arch.replace(':', '-')}_{cfg.method.name}.pth"


def export_encoder(encoder: torch.nn.Module, cfg: Config, run_dir: Path, extra: dict | None = None) -> None:
    """``encoder.safetensors`` + ``config.json`` (for ``crlf.load_encoder``, and ``ResNetEncoder.from_pretrained``
    for ResNets) and the ``.pth``. config.json names the arch and what rebuilds it: the stem of a ResNet, the
    timm model name and keyword arguments of a ViT or timm model (whose weights keep timm's own names)."""
    state = published_state_dict(encoder)
    atomic_write_bytes(run_dir / "encoder.safetensors", safetensors_bytes(state))
    meta = {**backbone_spec(encoder), "feature_dim": encoder.feature_dim,
            "image_size": cfg.data.image_size, "mean": list(cfg.augment.mean), "std": list(cfg.augment.std),
            "method": cfg.method.name, **(extra or {})}
    atomic_write_json(run_dir / "config.json", meta)
    atomic_save_with(run_dir / plain_pth_name(cfg), lambda buf: torch.save(state, buf))


def save_array(path: Path, array: np.ndarray) -> None:
    atomic_save_with(path, lambda buf: np.save(buf, array, allow_pickle=False))


def load_array(path: Path) -> np.ndarray:
    return np.load(path, allow_pickle=False)
