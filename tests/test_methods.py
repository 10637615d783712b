"""Every registered method on the one loop: its config runs, exports the encoder, and a run SIGKILLed
mid-epoch resumes to exactly the uninterrupted result (momentum targets, queues, centres included).

Each run is a real ``crlf pretrain`` (forked, see helpers_faults) of the method's own
``configs/methods/<name>.yaml`` on 8 tiny images, batch 4, 2 epochs, with the ImageNet stem and small
heads so that every method fits in the default suite; the full-size configs run in the ``slow`` test
below as a user's quick try does.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

from crlf.config import Config, apply_overrides, load_config
from crlf.methods import METHOD_NAMES, METHODS, method_class
from crlf.methods.base import Method, is_norm_or_bias
from crlf.models.backbones import build_backbone, load_encoder
from crlf.training.checkpoint import LATEST, load_checkpoint_file, save_checkpoint
from crlf.training.resolution import fixed_side

from conftest import REPO, make_image_folder
from helpers_faults import (
    TINY_FLAGS,
    assert_same_run,
    checkpoint_step,
    drop_large_files,
    fork_cli,
    load_reference,
    write_tiny_folder,
)

# Small heads and the cheap stem: the method's logic, not its published size, is under test here.
SMALL = ["--set", "model.stem=imagenet", "--set", "model.proj_hidden_dim=64", "--set", "model.proj_out_dim=32",
         "--set", "model.pred_hidden_dim=32",
         "--set", "train.compile=false", "--set", "train.precision=fp32"]  # GPU settings of some configs


def small(name: str) -> list[str]:
    """SMALL, plus 16 prototypes for the methods that have prototypes (a key a method lacks is an error), and the
    ViT-Tiny for the methods that need a ViT (their recipes' ViT-Small is 4x its cost)."""
    cls = method_class(name)
    has_prototypes = "num_prototypes" in cls.settings_type.keys()
    return (SMALL + (["--set", "method.num_prototypes=16"] if has_prototypes else [])
            + (["--set", "model.arch=vit_tiny"] if cls.needs_vit else []))


EVERY_3 = ["--checkpoint-every-steps", "3"]  # 2 steps per epoch: a mid-epoch checkpoint at global step 3


def config_path(name: str):
    return REPO / "configs" / "methods" / f"{name}.yaml"


def test_registry_names_match_their_classes():
    assert METHOD_NAMES == ("simclr", "mocov2", "mocov3", "byol", "simsiam", "swav", "vicreg", "barlowtwins", "dino",
                            "nnclr", "fastsiam", "mae", "ijepa")
    for name in METHODS:
        cls = method_class(name)
        assert issubclass(cls, Method) and cls.name == name


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_every_method_has_a_config_that_names_it_and_its_source(name):
    path = config_path(name)
    cfg = load_config(path)
    assert cfg.method.name == name
    header = path.read_text().split("\n", 3)[:3]
    assert any(line.startswith("#") for line in header), f"{path}: say where the recipe comes from"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_param_groups_hold_every_trainable_parameter_once_and_no_momentum_target(name):
    method = {"num_prototypes": 8} if "num_prototypes" in method_class(name).settings_type.keys() else {}
    cfg = apply_overrides(load_config(config_path(name)), {"model": {"proj_hidden_dim": 32, "proj_out_dim": 16,
                                                                     "pred_hidden_dim": 16}, "method": method})
    cfg = fixed_side(cfg)  # the recipes say auto: 32 px, CIFAR's
    method = method_class(name)(build_backbone(cfg.model, cfg.data.image_size), cfg, 1000)
    for exclude in (False, True):
        groups = method.param_groups(0.1, exclude)
        ids = [id(p) for g in groups for p in g["params"]]
        trainable = [id(p) for p in method.parameters() if p.requires_grad]
        assert sorted(ids) == sorted(trainable) and len(set(ids)) == len(ids)
        if exclude:  # biases, norm weights (1-d) and a ViT's position code and tokens without weight decay
            names = {id(p): n for n, p in method.named_parameters()}
            assert all(is_norm_or_bias(names[id(p)], p) == (g["weight_decay"] == 0.0)
                       for g in groups for p in g["params"])
    frozen = [n for n, p in method.named_parameters() if not p.requires_grad]
    if name in ("mocov2", "mocov3", "byol", "dino"):
        assert frozen, "a momentum target must not be trained by the optimiser"
    assert not any(n.startswith("backbone.") for n in frozen)


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    base = tmp_path_factory.mktemp("methods")
    yield {"data": write_tiny_folder(base / "data"), "cache": base / "cache", "base": base}
    drop_large_files(base)


def pretrain(name: str, tiny_data, out, *extra: str, **faults):
    args = ["pretrain", "--config", str(config_path(name)), "--data", str(tiny_data["data"]), "--out", str(out),
            *TINY_FLAGS, *small(name), *EVERY_3, *extra]
    return fork_cli(args, tiny_data["cache"], out.parent / f"{out.name}.{len(faults)}.log", **faults)


# Methods with nothing but weights and optimiser state crossing steps: their resume is what tests/test_resume.py
# proves for SimCLR, so their own runs are `slow`; the default suite keeps every method whose state crosses steps
# (momentum targets, queues, the centre, prototypes, MAE's masks from torch's generator).
STATELESS = ("simclr", "simsiam", "vicreg", "barlowtwins", "fastsiam")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in STATELESS else n
                                  for n in METHOD_NAMES])
def test_sigkill_mid_epoch_then_resume_is_exact(name, tiny_data, tmp_path):
    reference = pretrain(name, tiny_data, tmp_path / "reference")
    assert reference.returncode == 0, reference.output
    assert "Traceback" not in reference.output
    arch = "vit_tiny" if method_class(name).needs_vit else "resnet18"
    for artefact in ("encoder.safetensors", "config.json", f"encoder_{arch}_{name}.pth", "metrics.jsonl"):
        assert (tmp_path / "reference" / artefact).is_file(), artefact
    encoder = load_encoder(tmp_path / "reference")
    assert encoder.arch == arch and encoder(torch.randn(2, 3, 32, 32)).shape == (2, encoder.feature_dim)
    history = [json.loads(line) for line in (tmp_path / "reference" / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(np.isfinite(r["loss"]) and r["embedding_std"] > 0 for r in history)
    expected = load_reference(tmp_path / "reference")

    run = tmp_path / "run"
    killed = pretrain(name, tiny_data, run, kill_at_step=4)  # after the last step, before its checkpoint
    assert killed.killed, killed.output
    assert checkpoint_step(run / LATEST) == 3  # resumes from the mid-epoch checkpoint: queue, target, centre
    resumed = pretrain(name, tiny_data, run, "--resume")
    assert resumed.returncode == 0, resumed.output
    assert_same_run(run, expected)
    shutil.rmtree(tmp_path / "reference")


def test_a_format_1_checkpoint_resumes_exactly(tiny_data, tmp_path):
    """A SimCLR checkpoint written before the Method interface ({"encoder", "head"}) resumes to the same end."""
    name = "simclr"
    reference = pretrain(name, tiny_data, tmp_path / "reference")
    assert reference.returncode == 0, reference.output
    expected = load_reference(tmp_path / "reference")
    run = tmp_path / "run"
    assert pretrain(name, tiny_data, run, kill_at_step=4).killed
    state = load_checkpoint_file(run / LATEST)
    state.pop("format")
    state.pop("probe")  # format 1 had no online probe: the resumed run starts a fresh one,
    expected.pop("probe")  # so its accuracies differ from the uninterrupted run's (the weights do not)
    method = state.pop("method")
    progress = dict(state.pop("progress"))
    progress["epoch_std_sum"] = progress.pop("epoch_log_sums")["embedding_std"]
    old = {**state, "progress": progress,
           "encoder": {k.removeprefix("backbone."): v for k, v in method.items() if k.startswith("backbone.")},
           "head": {k.removeprefix("projector."): v for k, v in method.items() if k.startswith("projector.")}}
    (run / LATEST).unlink()
    import crlf.training.checkpoint

    original = crlf.training.checkpoint.FORMAT
    crlf.training.checkpoint.FORMAT = 1  # write it as the old code did
    try:
        save_checkpoint(run, old)
    finally:
        crlf.training.checkpoint.FORMAT = original
    assert torch.load(run / LATEST, weights_only=True)["format"] == 1
    resumed = pretrain(name, tiny_data, run, "--resume")
    assert resumed.returncode == 0, resumed.output
    assert_same_run(run, expected)


def test_a_checkpoint_from_a_newer_format_is_a_clear_error(tmp_path):
    import crlf.training.checkpoint
    from crlf.errors import UsageError

    original = crlf.training.checkpoint.FORMAT
    crlf.training.checkpoint.FORMAT = 3
    try:
        save_checkpoint(tmp_path, {"method": {}, "progress": {"global_step": 1}})
    finally:
        crlf.training.checkpoint.FORMAT = original
    with pytest.raises(UsageError, match="written by a newer CRLF"):
        load_checkpoint_file(tmp_path / LATEST)


def test_a_non_simclr_method_works_with_every_run_command(tmp_path, monkeypatch, capsys):
    """DINO (momentum teacher, multi-crop, prototypes): `crlf run` writes every artefact a SimCLR run does, and
    embed, search, report, sweep and compare work on its run."""
    from crlf.cli import main
    from test_end_to_end import ARTEFACTS

    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "images", train_per_class=8, test_per_class=2)
    flags = ["--config", str(config_path("dino")), "--data", str(data), "--epochs", "1", "--batch-size", "8",
             "--device", "cpu", "--quiet", *small("dino")]
    sweep = tmp_path / "sweep"
    assert main(["sweep", *flags, "--seeds", "0", "1", "--out", str(sweep)]) == 0
    run = sweep / "seed0"
    for artefact in ARTEFACTS:
        assert (run / artefact.replace("resnet18_simclr", "resnet18_dino")).is_file(), artefact
    assert (run / "report.html").is_file() and json.loads((run / "metrics.json").read_text())["config"]["method"][
        "name"] == "dino"
    assert main(["embed", str(run), "--data", str(data), "--out", str(tmp_path / "emb.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "emb.npy").shape == (30, 512)
    image = next((data / "test").rglob("*.png"))
    assert main(["search", str(run), str(image), "--k", "3", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()
    assert main(["compare", str(sweep / "seed0"), str(sweep / "seed1"), "--out", str(tmp_path / "cmp.png")]) == 0
    assert "linear_top1" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_published_config_runs_as_a_quick_try(name, tmp_path, monkeypatch):
    """`--limit 512 --batch-size 64 --epochs 2` on the full-size config: queues and warm-ups fit themselves
    to the small run (with a warning that says so), and the loss stays finite."""
    from crlf.cli import main

    monkeypatch.setenv("CRLF_CACHE", str(tmp_path / "cache"))
    data = make_image_folder(tmp_path / "images", train_per_class=171, test_per_class=2, classes=("a", "b", "c"))
    out = tmp_path / "run"
    code = main(["pretrain", "--config", str(config_path(name)), "--data", str(data), "--out", str(out),
                 "--limit", "512", "--batch-size", "64", "--epochs", "2", "--device", "cpu", "--quiet"])
    assert code == 0
    history = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2 and all(np.isfinite(r["loss"]) for r in history)
    assert yaml.safe_load((out / "config.yaml").read_text())["method"]["name"] == name


def test_unknown_method_name_in_a_config_file_is_a_usage_error_with_a_suggestion(tmp_path, capsys):
    from crlf.cli import main

    config = tmp_path / "c.yaml"
    config.write_text("method:\n  name: byo1\n")
    assert main(["pretrain", "--config", str(config), "--data", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "Did you mean 'byol'" in capsys.readouterr().err
    assert Config().method.name == "simclr"


@pytest.mark.parametrize("name", METHOD_NAMES)
def test_each_method_declares_its_settings_paper_card_and_advice_in_its_file(name):
    """What the model card and the loop say about a method comes from its class: no table elsewhere to forget."""
    cls = method_class(name)
    keys = cls.settings_type.keys()
    assert cls.settings_type().name == name and cls.title and cls.paper.startswith("https://")
    assert set(cls.card_settings) <= set(keys)
    # "raise --temperature" only where there is a temperature to raise.
    assert ("temperature" in cls.divergence_advice) == ("temperature" in keys)
