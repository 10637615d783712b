"""Every backbone CRLF trains, built from the ``model`` section, and any run's encoder loaded back.

``model.arch``: ``resnet18 | resnet34 | resnet50`` (:class:`~crlf.models.encoder.ResNetEncoder`, with
``model.stem``), ``vit_tiny | vit_small`` (ViTs for small images) or ``timm:NAME`` (any timm model), the last
two as :class:`~crlf.models.timm_encoder.TimmEncoder`. Every backbone maps ``(B, 3, H, W) -> (B, feature_dim)``
and has ``.arch`` and ``.feature_dim``; that is all the methods, evaluation, export and the demo rely on.

    enc = load_encoder("runs/r1")      # whatever the run's arch: reads config.json + encoder.safetensors
    feats = enc(images)                # (B, D), eval mode
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from crlf.config import ModelConfig
from crlf.errors import UsageError
from crlf.models.encoder import FEATURE_DIMS, ResNetEncoder
from crlf.models.timm_encoder import VIT_PRESETS, TimmEncoder, timm_encoder, vit_encoder

TIMM_PREFIX = "timm:"


def build_backbone(model: ModelConfig, image_size: int) -> nn.Module:
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


def encoder_from_spec(meta: dict) -> nn.Module:
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


def load_encoder(run_dir: str | Path, map_location: str | torch.device = "cpu") -> nn.Module:
    """A run's published encoder (``config.json`` + ``encoder.safetensors``), any arch, in eval mode.

    ResNet runs load as :meth:`ResNetEncoder.from_pretrained` loads them; ViT and timm runs are rebuilt from
    the timm name and arguments config.json records. Weights are read from safetensors only (never pickle)."""
    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / "config.json", run_dir / "encoder.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise UsageError(f"'{path}' is missing; is '{run_dir}' a finished run? (crlf pretrain writes it)")
    try:
        meta = json.loads(config_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError(f"'{config_path}' is not valid JSON ({exc}); re-export it with crlf pretrain.") from None
    if not isinstance(meta, dict):
        raise UsageError(f"'{config_path}' must hold a JSON object; re-export it with crlf pretrain.")
    if meta.get("arch") in FEATURE_DIMS:
        return ResNetEncoder.from_pretrained(run_dir, map_location).to(map_location)
    from safetensors.torch import load_file

    encoder = encoder_from_spec(meta)
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except Exception as exc:
        raise UsageError(f"could not read '{weights_path}': {exc}. Re-export it with crlf pretrain.") from None
    try:
        encoder.model.load_state_dict(state)
    except RuntimeError as exc:
        raise UsageError(f"'{weights_path}' does not fit the {meta['arch']} of '{config_path}': "
                         f"{str(exc).splitlines()[0]}") from None
    return encoder.to(map_location).eval()
