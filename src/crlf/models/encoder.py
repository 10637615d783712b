"""ResNet encoders from torchvision, without the classifier: images ``(B, 3, H, W)`` -> features ``(B, D)``.

The module's parameter names are torchvision's own (``conv1.weight``, ``layer1.0.bn1.weight``, ...), so
saved weights also load into a torchvision ResNet with ``strict=False`` (only ``fc`` is missing).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models

FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


class TapTrimmedConv2d(nn.Conv2d):
    """A 3x3, padding-1 convolution that skips the taps that only ever see padding.

    With the ImageNet stem at 32 px (16 px), layer4 (layer3 too) runs on 1x1 maps: there a 3x3 convolution
    is exactly its centre tap, a 1x1 convolution, and on a 2x2 map with stride 2 exactly its lower-right
    2x2 taps. Computing only those gives the same function (and the same gradients: the skipped taps get
    zero gradient either way) at 1/9 or 4/9 of the multiply-adds; oneDNN would multiply the padding
    zeros too. The weights stay 3x3, so checkpoints and torchvision compatibility are unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        if (h, w) == (1, 1):  # any stride: the output is 1x1 and sees the centre tap only
            return F.conv2d(x, self.weight[:, :, 1:2, 1:2], self.bias)
        if (h, w) == (2, 2) and self.stride == (2, 2):  # output 1x1 over input rows/cols 0-1 = taps 1-2
            return F.conv2d(x, self.weight[:, :, 1:3, 1:3], self.bias)
        return super().forward(x)


def _trim_taps(module: nn.Module) -> None:
    """Swap every 3x3 / padding-1 / ungrouped convolution for a TapTrimmedConv2d sharing its parameters."""
    for name, child in module.named_children():
        if (type(child) is nn.Conv2d and child.kernel_size == (3, 3) and child.padding == (1, 1)
                and child.dilation == (1, 1) and child.groups == 1 and child.padding_mode == "zeros"):
            trimmed = TapTrimmedConv2d(child.in_channels, child.out_channels, 3, child.stride, 1,
                                       bias=child.bias is not None)
            trimmed.weight = child.weight
            trimmed.bias = child.bias
            setattr(module, name, trimmed)
        else:
            _trim_taps(child)


class ResNetEncoder(nn.Module):
    """torchvision ResNet backbone with an ``imagenet`` stem (7x7/2 conv + max-pool) or a ``cifar`` stem
    (3x3/1 conv, no max-pool: 4x the resolution in every stage, ~15x the compute at 32x32)."""

    def __init__(self, arch: str = "resnet18", stem: str = "imagenet", pretrained: bool = False):
        super().__init__()
        if arch not in FEATURE_DIMS:
            raise ValueError(f"arch must be one of {sorted(FEATURE_DIMS)}, got '{arch}'")
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got '{stem}'")
        if pretrained:
            raise ValueError("pretrained ImageNet weights are not used: CRLF learns its weights without labels")
        net = getattr(models, arch)(weights=None)
        if stem == "cifar":
            net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            net.maxpool = nn.Identity()
        _trim_taps(net)
        self.arch, self.stem = arch, stem
        self.feature_dim = FEATURE_DIMS[arch]
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            setattr(self, name, getattr(net, name))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)  # (B, D)

    @classmethod
    def from_pretrained(cls, run_dir: str | Path, map_location: str | torch.device = "cpu") -> ResNetEncoder:
        """Load a run's published weights (``encoder.safetensors`` + ``config.json``), with the checks
        :func:`crlf.models.backbones.load_encoder` makes (the files exist, are readable and fit each other)."""
        from crlf.errors import UsageError

        meta, weights_path = read_published(run_dir)
        if meta.get("arch") not in FEATURE_DIMS:  # a ViT or timm run: not a ResNet, so not this class
            raise UsageError(f"'{run_dir}' holds a {meta.get('arch')} encoder, not a ResNet; load it with "
                             f"crlf.load_encoder('{run_dir}') (any arch).")
        encoder = cls(arch=meta["arch"], stem=meta.get("stem", "imagenet"))
        load_published_weights(encoder, weights_path, meta["arch"], map_location)
        return encoder.eval()


def read_published(run_dir: str | Path) -> tuple[dict, Path]:
    """A run's published encoder files, checked: ``(config.json as a dict, the path of encoder.safetensors)``.
    Every way of loading an encoder goes through here and :func:`load_published_weights`, so each gives the same
    errors (exit 2, naming the fix)."""
    from crlf.errors import UsageError

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
    return meta, weights_path


def load_published_weights(module: nn.Module, weights_path: Path, arch: str,
                           map_location: str | torch.device = "cpu") -> None:
    """Read ``weights_path`` (safetensors only, never pickle) into ``module``; an unreadable file or one that does
    not fit is a usage error naming the file and the arch. Called once the module is built from config.json, so
    a bad config.json is reported before the weights are read."""
    from safetensors.torch import load_file

    from crlf.errors import UsageError

    try:
        state = load_file(str(weights_path), device=str(map_location))
    except Exception as exc:
        raise UsageError(f"could not read '{weights_path}': {exc}. Re-export it with crlf pretrain.") from None
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise UsageError(f"'{weights_path}' does not fit the {arch} of '{weights_path.parent / 'config.json'}': "
                         f"{str(exc).splitlines()[0]}") from None
