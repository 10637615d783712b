"""Self-supervised methods, all trained by the one loop in ``crlf.train``.

``METHODS`` is the registry: ``method.name`` -> the class that implements it, as ``"module:Class"`` so
that reading a config (and ``crlf --help``) never imports torch. ``build_method`` imports on demand.
Each class subclasses :class:`crlf.methods.base.Method`.
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
}
METHOD_NAMES = tuple(METHODS)


def method_class(name: str):
    """The class registered under ``name`` (config validation has already checked the name)."""
    module, _, cls = METHODS[name].partition(":")
    return getattr(importlib.import_module(module), cls)
