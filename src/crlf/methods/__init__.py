"""Self-supervised methods, all trained by the one loop in ``crlf.training.loop``.

``METHODS`` is the registry: ``method.name`` -> the class that implements it, as ``"module:Class"`` so that
``crlf --help`` never imports torch; :func:`method_class` imports the file on demand (reading a config does,
for the method's settings). A method is one file: a :class:`crlf.methods.settings.MethodSettings` dataclass
(its ``method:`` keys, defaults and checks) and a :class:`crlf.methods.base.Method` subclass (heads, loss,
paper, model-card settings, divergence advice) that names it in ``settings_type``. Adding one is that file
and one line here.
"""

from __future__ import annotations

import importlib

METHODS: dict[str, str] = {
    "simclr": "crlf.methods.simclr:SimCLR",
    "mocov2": "crlf.methods.moco:MoCoV2",
    "mocov3": "crlf.methods.moco:MoCoV3",
    "byol": "crlf.methods.byol:BYOL",
    "simsiam": "crlf.methods.simsiam:SimSiam",
    "swav": "crlf.methods.swav:SwAV",
    "vicreg": "crlf.methods.vicreg:VICReg",
    "barlowtwins": "crlf.methods.barlowtwins:BarlowTwins",
    "dino": "crlf.methods.dino:DINO",
    "nnclr": "crlf.methods.nnclr:NNCLR",
    "fastsiam": "crlf.methods.fastsiam:FastSiam",
    "mae": "crlf.methods.mae:MAE",
    "ijepa": "crlf.methods.ijepa:IJEPA",
}
METHOD_NAMES = tuple(METHODS)


def method_class(name: str):
    """The class registered under ``name`` (config validation has already checked the name)."""
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
