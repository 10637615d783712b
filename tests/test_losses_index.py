"""``crlf.losses``: every registered method's loss is importable from the one index, as Lightly's are."""

from __future__ import annotations

import pytest

import crlf.losses
from crlf.config import apply_overrides, load_config
from crlf.methods import METHOD_NAMES, method_class
from crlf.models.backbones import build_backbone
from crlf.training.resolution import fixed_side

from conftest import REPO


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_methods_loss_is_in_the_index(name):
    cls = method_class(name)
    method = {"num_prototypes": 8} if "num_prototypes" in cls.settings_type.keys() else {}
    cfg = apply_overrides(load_config(REPO / "configs" / "methods" / f"{name}.yaml"),
                          {"model": {"proj_hidden_dim": 32, "proj_out_dim": 16, "pred_hidden_dim": 16}, "method": method})
    cfg = fixed_side(cfg)  # the recipes say auto: 32 px, CIFAR's
    loss = cls(build_backbone(cfg.model, cfg.data.image_size), cfg, 100_000).loss_fn  # queues fit: no warning
    assert getattr(crlf.losses, type(loss).__name__) is type(loss)
    assert type(loss).__name__ in crlf.losses.__all__


def test_the_index_holds_only_what_it_names():
    assert all(hasattr(crlf.losses, name) for name in crlf.losses.__all__)
    assert len(set(crlf.losses.__all__)) == len(crlf.losses.__all__)
