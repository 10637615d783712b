"""Vision Transformers for small images, and any timm model, as CRLF backbones: ``(B, 3, H, W) -> (B, D)``.

Both are timm models (https://github.com/huggingface/pytorch-image-models), built by
``timm.create_model(name, pretrained=False, num_classes=0, **kwargs)``: no classifier head, never a download.
``TimmEncoder`` only adds what the rest of CRLF reads (``arch``, ``feature_dim``) and remembers the name and
keyword arguments it was built from, which ``config.json`` records so that the published weights (timm's own
parameter names) load into ``timm.create_model`` with nothing of CRLF installed.

``vit_tiny`` (width 192, depth 12, 3 heads) and ``vit_small`` (384, 12, 6) are timm's
``vit_tiny_patch16_224`` / ``vit_small_patch16_224`` with the patch size and image size of small images: patch
``image_size // 8`` (4 px at 32 px, so an 8x8 grid of 64 tokens + the class token, as solo-learn's and DINO's
ViTs for CIFAR take) unless ``model.patch_size`` says otherwise. ``dynamic_img_size=True`` lets the same
weights take smaller views (16-px multi-crop views, progressive resizing): timm interpolates the 8x8 position
embeddings to the view's grid on the fly. Features are the class token after the final LayerNorm (timm's
``global_pool="token"``), what MoCo v3 and DINO train and evaluate, rather than mean-pooled patch tokens.
"""

from __future__ import annotations

import torch
from torch import nn

# CRLF's ViT name -> timm's model of the same width, depth and heads (patch and image size are overridden).
VIT_PRESETS = {"vit_tiny": "vit_tiny_patch16_224", "vit_small": "vit_small_patch16_224"}
# The only keyword arguments a config.json may pass to timm.create_model: a run folder from elsewhere must not
# name e.g. checkpoint_path (timm would unpickle that file) or pretrained weights to download.
ALLOWED_KWARGS = ("num_classes", "img_size", "patch_size", "dynamic_img_size", "drop_path_rate")


def vit_patch_size(patch_size: int, image_size: int) -> int:
    """``model.patch_size``, or for 0 the patch that gives an 8x8 grid at ``data.image_size`` (4 px at 32 px)."""
    return patch_size or max(1, image_size // 8)


class TimmEncoder(nn.Module):
    """A timm model without its classifier; ``forward`` is the model's own (pooled, pre-logits features).

    The timm model is ``self.model``: its ``state_dict`` is what ``export`` publishes, with timm's names."""

    def __init__(self, arch: str, timm_name: str, timm_kwargs: dict):
        super().__init__()
        import timm

        unknown = sorted(set(timm_kwargs) - set(ALLOWED_KWARGS))
        if unknown:
            raise ValueError(f"timm keyword arguments {unknown} are not allowed; only {', '.join(ALLOWED_KWARGS)}")
        if not timm.is_model(timm_name):
            raise ValueError(f"timm has no model '{timm_name}' (timm {timm.__version__})")
        self.model = timm.create_model(timm_name, pretrained=False, **{"num_classes": 0, **timm_kwargs})
        self.arch, self.timm_name, self.timm_kwargs = arch, timm_name, {"num_classes": 0, **timm_kwargs}
        # The pooled feature width: head_hidden_size where a model has a pre-logits layer after its last stage
        # (MobileNetV3's conv_head: num_features 288 -> 1024 features), else num_features.
        self.feature_dim = int(getattr(self.model, "head_hidden_size", None) or self.model.num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (B, feature_dim)

    def spec(self) -> dict:
        """What ``config.json`` needs to rebuild this model with plain timm."""
        import timm

        return {"timm_name": self.timm_name, "timm_kwargs": dict(self.timm_kwargs), "timm_version": timm.__version__}


def vit_encoder(arch: str, image_size: int, patch_size: int = 0, drop_path_rate: float = 0.0) -> TimmEncoder:
    """``vit_tiny`` / ``vit_small`` for ``image_size``-px images (see the module docstring)."""
    if arch not in VIT_PRESETS:
        raise ValueError(f"arch must be one of {sorted(VIT_PRESETS)}, got '{arch}'")
    kwargs = {"img_size": image_size, "patch_size": vit_patch_size(patch_size, image_size),
              "dynamic_img_size": True, "drop_path_rate": drop_path_rate}
    return TimmEncoder(arch, VIT_PRESETS[arch], kwargs)


def timm_encoder(name: str, image_size: int, patch_size: int = 0, drop_path_rate: float = 0.0) -> TimmEncoder:
    """``timm:NAME``: the model as timm defines it, told the image size if it takes one.

    Models that cut the image into a fixed grid of patches (ViT, DeiT, ...) take ``img_size``, and those that
    can interpolate their position embeddings also ``dynamic_img_size``; a CNN takes neither. timm has no
    way to ask a model which it takes, so offer the most and fall back on the ``TypeError`` naming it.
    ``patch_size`` and ``drop_path_rate`` are passed only when set (> 0): then the model must take them."""
    options = {"patch_size": patch_size} if patch_size else {}
    if drop_path_rate:
        options["drop_path_rate"] = drop_path_rate
    for extra in ({"img_size": image_size, "dynamic_img_size": True}, {"img_size": image_size}, {}):
        try:
            return TimmEncoder(f"timm:{name}", name, {**options, **extra})
        except TypeError as exc:
            if extra and any(f"'{key}'" in str(exc) for key in extra):
                continue  # the model does not take what we offered: offer less
            from crlf.errors import UsageError

            raise UsageError(f"cannot build timm model '{name}' with model.patch_size={patch_size} and "
                             f"model.drop_path_rate={drop_path_rate:g} ({exc}); set them to 0 for it.") from None
    raise AssertionError("unreachable: the last attempt offers nothing, so it returns or raises")
