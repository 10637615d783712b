"""torch.hub entry points: a CRLF run's encoder without installing CRLF.

    import torch
    enc = torch.hub.load("path/to/crlf", "encoder", run="runs/r1", source="local")   # eval mode
    feats = enc(images)    # (B, 3, S, S) normalised as config.json says -> (B, D)

Only ``source="local"`` (a checkout of this repository): CRLF's weights live in run folders, not in a release.
"""

import sys
from pathlib import Path

dependencies = ["torch", "torchvision", "timm", "safetensors", "yaml"]

_SRC = Path(__file__).resolve().parent / "src"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))  # works whether or not crlf is pip-installed, as simclr_train.py does


def encoder(run: str, map_location: str = "cpu"):
    """The published encoder of the run folder ``run`` (ResNet, ViT or timm backbone), in eval mode.

    Input: ``(B, 3, S, S)`` float32 images, RGB scaled to [0, 1] then normalised with the run's ``mean`` / ``std``,
    ``S`` its ``image_size`` (all three in ``RUN/config.json``). Output: ``(B, D)`` features, ``D`` =
    ``enc.feature_dim`` (512 for ResNet-18). Accuracy depends on the run: its linear-probe and kNN top-1 are in
    ``RUN/metrics.json`` (``linear_top1``, ``knn_top1``, ``knn_top1_k20``) and on its model card, ``RUN/README.md``,
    once ``crlf evaluate RUN`` has run. The CIFAR-10 figures of the shipped recipes are in the repository's README.
    """
    from crlf.models.backbones import load_encoder

    return load_encoder(run, map_location).eval()
