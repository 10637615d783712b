"""Hugging Face Hub: any CRLF encoder with ``save_pretrained`` / ``from_pretrained`` / ``push_to_hub``.

    from crlf.publish.hub import HubEncoder
    enc = HubEncoder.from_run("runs/r1")              # a run's encoder, any backbone, eval mode
    enc.save_pretrained("hf/r1")                      # model.safetensors + config.json + README.md (the run's card)
    enc.push_to_hub("me/crlf-r1")                     # huggingface_hub's own upload (needs a login)
    enc = HubEncoder.from_pretrained("hf/r1")         # or "me/crlf-r1" from the Hub
    feats = enc(images)                               # (B, 3, S, S) normalised -> (B, D)

:class:`HubEncoder` is huggingface_hub's :class:`~huggingface_hub.PyTorchModelHubMixin` on a wrapper around a
CRLF backbone. Its config is the run's ``config.json`` (arch, stem or timm name and arguments, image size, mean,
std, ...), so ``from_pretrained`` rebuilds whichever backbone it was. ``model.safetensors`` holds the weights
under the same names as the run's ``encoder.safetensors`` (torchvision's for a ResNet, timm's otherwise): they
load into plain torchvision / timm too. Weights are read from safetensors only, strictly (a missing or extra
tensor is an error, where the mixin alone would skip it). Files are written by huggingface_hub in place, except
``model.safetensors`` (atomic, :mod:`crlf.io`); a Hub folder is a copy to publish, not a run artefact.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from huggingface_hub import ModelCard, PyTorchModelHubMixin, constants, hf_hub_download
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import nn

from crlf.errors import UsageError
from crlf.io import atomic_write_bytes
from crlf.models.backbones import encoder_from_spec, load_encoder, published_state_dict
from crlf.models.timm_encoder import TimmEncoder

WEIGHTS = constants.SAFETENSORS_SINGLE_FILE  # "model.safetensors"


class HubEncoder(nn.Module, PyTorchModelHubMixin, library_name="crlf", pipeline_tag="image-feature-extraction",
                 tags=["crlf", "self-supervised-learning", "image-feature-extraction"]):
    """A CRLF backbone for the Hugging Face Hub. ``config``: a run's ``config.json`` (at least ``arch``, and
    ``stem`` or ``timm_name`` + ``timm_kwargs``); the weights are fresh until loaded."""

    def __init__(self, config: dict):
        super().__init__()
        self.spec = dict(config)
        self.backbone = encoder_from_spec(self.spec)
        self.feature_dim = self.backbone.feature_dim
        self._card: str | None = None  # the run's model card, when made by from_run

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone(x)  # (B, 3, S, S) -> (B, D)

    @classmethod
    def from_run(cls, run_dir: str | Path, map_location: str | torch.device = "cpu") -> HubEncoder:
        """A run's published encoder (``config.json`` + ``encoder.safetensors``), with its model card."""
        run_dir = Path(run_dir)
        encoder = load_encoder(run_dir)  # UsageError if the run has none
        model = cls(config=json.loads((run_dir / "config.json").read_text()))
        _load_published(model.backbone, published_state_dict(encoder), strict=True)
        card = run_dir / "README.md"
        model._card = card.read_text() if card.is_file() else None
        return model.to(map_location).eval()

    def _save_pretrained(self, save_directory: Path) -> None:
        atomic_write_bytes(Path(save_directory) / WEIGHTS,
                           safetensors_bytes(published_state_dict(self.backbone), metadata={"format": "pt"}))

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        """The run's own card (method, data, recipe, figures, command) when there is one, else the mixin's."""
        return ModelCard(self._card) if self._card else super().generate_model_card(*args, **kwargs)

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir, force_download: bool,
                         local_files_only: bool, token, map_location: str = "cpu", strict: bool = True,
                         config: dict | None = None, **model_kwargs) -> HubEncoder:
        if not config:
            raise UsageError(f"'{model_id}' has no config.json naming its backbone; it was not saved by "
                             f"HubEncoder.save_pretrained.")
        model = cls(config=config)
        if os.path.isdir(model_id):
            weights = Path(model_id) / WEIGHTS
            if not weights.is_file():
                raise UsageError(f"'{weights}' is missing; was '{model_id}' written by HubEncoder.save_pretrained?")
        else:
            weights = hf_hub_download(repo_id=model_id, filename=WEIGHTS, revision=revision, cache_dir=cache_dir,
                                      force_download=force_download, token=token, local_files_only=local_files_only)
        _load_published(model.backbone, load_file(str(weights)), strict=strict)
        return model.to(map_location).eval()


def from_run(run_dir: str | Path, map_location: str | torch.device = "cpu") -> HubEncoder:
    """:meth:`HubEncoder.from_run`."""
    return HubEncoder.from_run(run_dir, map_location)


def _load_published(backbone: nn.Module, state: dict[str, torch.Tensor], strict: bool) -> None:
    """Load weights named as ``published_state_dict`` names them (the inverse of it)."""
    module = backbone.model if isinstance(backbone, TimmEncoder) else backbone
    try:
        module.load_state_dict(state, strict=strict)
    except RuntimeError as exc:
        raise UsageError(f"the weights do not fit the {getattr(backbone, 'arch', '?')} backbone: "
                         f"{str(exc).splitlines()[0]}") from None
