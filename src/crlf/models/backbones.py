"""Every backbone CRLF trains, built from the ``model`` section, and any run's encoder loaded back.

``model.arch``: ``resnet18 | resnet34 | resnet50`` (:class:`~crlf.models.encoder.ResNetEncoder`, with
``model.stem``), ``vit_tiny | vit_small`` (ViTs for small images) or ``timm:NAME`` (any timm model), the last
two as :class:`~crlf.models.timm_encoder.TimmEncoder`. Every backbone maps ``(B, 3, H, W) -> (B, feature_dim)``
and has ``.arch`` and ``.feature_dim``; that is all the methods, evaluation, export and the demo rely on.

    enc = load_encoder("runs/r1")      # whatever the run's arch: reads config.json + encoder.safetensors
    feats = enc(images)                # (B, D), eval mode
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from crlf.config import ModelConfig
from crlf.errors import UsageError
from crlf.models.encoder import FEATURE_DIMS, ResNetEncoder, load_published_weights, read_published
from crlf.models.timm_encoder import VIT_PRESETS, TimmEncoder, timm_encoder, vit_encoder

TIMM_PREFIX = "timm:"
# What the methods train and evaluation, export and the demo use: ``(B, 3, H, W) -> (B, feature_dim)``.
Backbone = ResNetEncoder | TimmEncoder


def build_backbone(model: ModelConfig, image_size: int) -> Backbone:
    """A freshly initialised backbone for ``model.arch`` and ``image_size``-px images (``data.image_size``).

    ResNets are built exactly as before this module existed (same construction, same random draws), so
    ResNet runs stay bit-identical; ``stem`` applies to them only and other archs ignore it."""
    if model.arch in FEATURE_DIMS:
        return ResNetEncoder(model.arch, model.stem)
    if model.arch in VIT_PRESETS:
        return vit_encoder(model.arch, image_size, model.patch_size, model.drop_path_rate)
    if model.arch.startswith(TIMM_PREFIX):
        return timm_encoder(model.arch.removeprefix(TIMM_PREFIX), image_size, model.patch_size, model.drop_path_rate)
    raise UsageError(f"unknown model.arch '{model.arch}' (config validation should have caught it).")


def backbone_spec(encoder: nn.Module) -> dict:
    """What ``config.json`` records to rebuild ``encoder``: its arch, and the stem (ResNet) or the timm model
    name and keyword arguments (ViT, timm)."""
    if isinstance(encoder, ResNetEncoder):
        return {"arch": encoder.arch, "stem": encoder.stem}
    if isinstance(encoder, TimmEncoder):
        return {"arch": encoder.arch, **encoder.spec()}
    raise TypeError(f"not a CRLF backbone: {type(encoder).__name__}")


def published_state_dict(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The weights ``export`` publishes: torchvision's names for a ResNet, timm's own for a timm model (so
    ``timm.create_model(...).load_state_dict`` takes them as they are)."""
    module = encoder.model if isinstance(encoder, TimmEncoder) else encoder
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}


def encoder_from_spec(meta: dict) -> Backbone:
    """An untrained backbone from a ``config.json`` dict (the inverse of :func:`backbone_spec`)."""
    arch = meta.get("arch")
    if arch in FEATURE_DIMS:
        return ResNetEncoder(arch, meta.get("stem", "imagenet"))
    if not isinstance(arch, str) or "timm_name" not in meta:
        raise UsageError(f"config.json names arch {arch!r} without a timm_name: it was not written by this CRLF "
                         f"(known: {', '.join(FEATURE_DIMS)}, {', '.join(VIT_PRESETS)}, timm:<name>).")
    try:
        return TimmEncoder(arch, str(meta["timm_name"]), dict(meta.get("timm_kwargs") or {}))
    except (ValueError, TypeError) as exc:
        raise UsageError(f"cannot rebuild the {arch} encoder of config.json: {exc}") from None


def load_encoder(run_dir: str | Path, map_location: str | torch.device = "cpu") -> Backbone:
    """A run's published encoder (``config.json`` + ``encoder.safetensors``), any arch, in eval mode.

    ResNet runs load as :meth:`ResNetEncoder.from_pretrained` loads them; ViT and timm runs are rebuilt from
    the timm name and arguments config.json records. Weights are read from safetensors only (never pickle)."""
    meta, weights_path = read_published(run_dir)
    if meta.get("arch") in FEATURE_DIMS:
        return ResNetEncoder.from_pretrained(run_dir, map_location).to(map_location)
    encoder = encoder_from_spec(meta)  # checks the timm name and arguments before any weights are read
    load_published_weights(encoder.model, weights_path, meta["arch"], map_location)
    return encoder.to(map_location).eval()
