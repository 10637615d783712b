"""A linear probe in a file: ``crlf classify --save-probe`` writes it, ``--probe`` and ``crlf demo --probe``
read it. The format of a run's ``linear_probe.safetensors``: weight, bias, feature mean and std, the class
names (and what made it) in the metadata. Kept apart from :mod:`crlf.classify` so that
:mod:`crlf.serve.search` can read a probe without importing the curation commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from crlf.errors import UsageError
from crlf.io import atomic_write_bytes

if TYPE_CHECKING:  # crlf.evaluate imports scikit-learn (seconds): the demo reads a probe without it
    from crlf.evaluate import LinearProbe


def save_probe(path: Path, probe: LinearProbe, classes: list[str], meta: dict) -> None:
    from safetensors.torch import save as safetensors_bytes

    tensors = {"weight": probe.weight, "bias": probe.bias, "mean": probe.mean, "std": probe.std}
    metadata = {"classes": json.dumps(classes), "crlf": json.dumps(meta)}
    atomic_write_bytes(path, safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def read_probe(path: Path) -> tuple[dict, list[str], dict]:
    """The tensors (weight, bias, mean, std, float), the class names (empty where the file has none: runs
    evaluated before names were stored) and the maker's metadata of a probe file, unchecked."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        tensors = {name: f.get_tensor(name).float() for name in ("weight", "bias", "mean", "std")}
        metadata = f.metadata() or {}
    return tensors, json.loads(metadata.get("classes", "[]")), json.loads(metadata.get("crlf", "{}"))


def load_probe(path: Path) -> tuple[LinearProbe, list[str], dict]:
    from safetensors import SafetensorError

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"probe file '{path}' does not exist; make one with crlf classify ... --save-probe {path}.")
    try:
        tensors, classes, meta = read_probe(path)
    except (SafetensorError, OSError, KeyError) as exc:
        raise UsageError(f"'{path}' is not a probe saved by crlf classify --save-probe ({exc}).") from None
    from crlf.evaluate import LinearProbe

    if len(classes) != tensors["weight"].shape[0]:
        raise UsageError(f"'{path}' has no class names for its {tensors['weight'].shape[0]} outputs; save it "
                         f"again with crlf classify --save-probe.")
    probe = LinearProbe(tensors["weight"], tensors["bias"], tensors["mean"], tensors["std"], float("nan"), {})
    return probe, classes, meta
