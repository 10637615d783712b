"""ResNet encoders from torchvision, without the classifier: images ``(B, 3, H, W)`` -> features ``(B, D)``.

The module's parameter names are torchvision's own (``conv1.weight``, ``layer1.0.bn1.weight``, ...), so
saved weights also load into a torchvision ResNet with ``strict=False`` (only ``fc`` is missing).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn
from torchvision import models

FEATURE_DIMS = {"resnet18": 512, "resnet34": 512, "resnet50": 2048}


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
        """Load a run's published weights (``encoder.safetensors`` + ``config.json``)."""
        from safetensors.torch import load_file

        from crlf.errors import UsageError

        run_dir = Path(run_dir)
        config_path, weights_path = run_dir / "config.json", run_dir / "encoder.safetensors"
        for path in (config_path, weights_path):
            if not path.is_file():
                raise UsageError(f"'{path}' is missing; is '{run_dir}' a finished run? (crlf pretrain writes it)")
        meta = json.loads(config_path.read_text())
        encoder = cls(arch=meta["arch"], stem=meta["stem"])
        try:
            state = load_file(str(weights_path), device=str(map_location))
        except Exception as exc:
            raise UsageError(f"could not read '{weights_path}': {exc}. Re-export it with crlf pretrain.") from None
        encoder.load_state_dict(state)
        return encoder.eval()
