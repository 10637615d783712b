"""The online linear probe: a linear classifier trained beside the method on the backbone's detached features,
to watch a run learn (solo-learn's and Lightly's online classifier). ``train.online_probe`` (default true) turns
it on where the training images have labels.

Each step it sees the features of the first global view that the method's forward already computed (no extra
backbone pass), predicts their classes, is scored, then takes one step of its own optimiser. The features are
detached, so no gradient reaches the encoder; the probe's parameters start at zero, so building it draws no
random numbers; and it is no part of the method: the encoder's weights, the method's state and every step's
loss are what they are without it (a test). Its accuracy, averaged over the epoch, is ``online_probe_top1`` in
metrics.jsonl, TensorBoard (``epoch/online_probe_top1``) and the report's pretraining curve: the accuracy on
each batch *before* the probe learned from it, on augmented views, so a lower bound of the linear evaluation's.

With several processes each rank gathers the whole global batch's features and labels and takes the same step,
so the probe is the same on every rank. Its weights and optimiser state are in the checkpoint: a resumed run
logs the same accuracies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from crlf.training import distributed

PROBE_LR = 1e-3  # Adam: insensitive to the features' scale, which differs between backbones and over training


class OnlineProbe(nn.Module):
    """``Linear(feature_dim, num_classes)`` on detached features, with its own Adam optimiser."""

    def __init__(self, feature_dim: int, num_classes: int, device: torch.device | str = "cpu"):
        super().__init__()
        # skip_init: nn.Linear would draw its initial weights from torch's global generator, which a resumed run
        # has just restored (MAE's masks come from it); zeros draw nothing.
        self.linear = nn.utils.skip_init(nn.Linear, feature_dim, num_classes, device=device)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.optimizer = torch.optim.Adam(self.linear.parameters(), lr=PROBE_LR)

    def step(self, features: torch.Tensor, labels: torch.Tensor) -> float | None:
        """One update on ``features`` ``(B, F)`` and ``labels`` ``(B,)`` (-1: unlabelled, left out) of this rank;
        returns the accuracy of the predictions made before the update, over the global batch (None: no label)."""
        features = distributed.gather(features.detach().float())  # (B global, F)
        labels = distributed.gather(labels.to(features.device))  # (B global,)
        keep = labels >= 0
        if not bool(keep.any()):
            return None
        features, labels = features[keep], labels[keep]
        with torch.autocast(features.device.type, enabled=False), torch.enable_grad():
            logits = self.linear(features)  # (B', C)
            loss = F.cross_entropy(logits, labels)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
        return float((logits.detach().argmax(1) == labels).float().mean())

    def checkpoint(self) -> dict:
        return {"linear": self.linear.state_dict(), "optimizer": self.optimizer.state_dict()}

    def restore(self, state: dict) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])


def build_online_probe(enabled: bool, feature_dim: int, labels, device: torch.device | str) -> OnlineProbe | None:
    """The probe of a run, or None: turned off, or no training image has a label."""
    if not enabled or len(labels) == 0 or int(labels.max()) < 0:
        return None
    return OnlineProbe(feature_dim, int(labels.max()) + 1, device)
