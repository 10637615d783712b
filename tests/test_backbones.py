"""Every backbone (ResNets, ViTs for small images, any timm model): shapes at 32 and 16 px, parameter groups,
the channels-last layout, config.json round trips (CRLF and plain timm), config errors, and end-to-end runs
from the CLI (`--set model.arch=...` on shipped configs, the ViT recipes) with evaluate, embed and search.

Runs use tiny images, batch 4, one epoch and small heads (tests/test_methods.py's SMALL) to fit the default
suite on 2 busy cores."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from crlf import ResNetEncoder, load_encoder
from crlf.cli import main
from crlf.config import Config, apply_overrides, load_config
from crlf.errors import UsageError
from crlf.methods import method_class
from crlf.methods.base import is_norm_or_bias
from crlf.models.backbones import build_backbone
from crlf.models.timm_encoder import TimmEncoder
from crlf.publish.export import export_encoder
from test_methods import small

from conftest import REPO, make_image_folder


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: on 2 cores shared with other work, two threads wait on each other (a ViT build took
    3 s instead of 0.1 s); the runs below pass --threads 1 for the same reason."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cfg_for(arch: str, **model) -> Config:
    return apply_overrides(Config(), {"data": {"image_size": 32},
                                      "model": {"arch": arch, "proj_hidden_dim": 32, "proj_out_dim": 16, **model}})


@pytest.mark.parametrize("arch, dim", [("resnet18", 512), ("resnet34", 512), ("resnet50", 2048), ("vit_tiny", 192),
                                       ("vit_small", 384), ("timm:resnet10t", 512),
                                       ("timm:vit_tiny_patch16_224", 192),
                                       ("timm:mobilenetv3_small_050", 1024)])  # feature width != num_features
def test_every_backbone_maps_32_and_16_px_images_to_its_feature_dim(arch, dim):
    torch.manual_seed(0)
    enc = build_backbone(cfg_for(arch).model, image_size=32).eval()
    assert enc.feature_dim == dim and enc.arch == arch
    with torch.no_grad():
        for size in (32, 16):  # 16 px: progressive resizing and multi-crop's local views
            assert enc(torch.randn(2, 3, size, size)).shape == (2, dim)


def test_resnets_are_built_as_before_and_other_archs_ignore_the_stem():
    torch.manual_seed(0)
    ours = build_backbone(cfg_for("resnet18", stem="cifar").model, 32)
    rng_after_ours = torch.get_rng_state()
    torch.manual_seed(0)
    reference = ResNetEncoder("resnet18", "cifar")  # the construction (and RNG draws) of every ResNet run so far
    assert torch.equal(rng_after_ours, torch.get_rng_state())  # the same draws: later steps see the same stream
    assert type(ours) is ResNetEncoder and ours.stem == "cifar"
    for (name, a), (_, b) in zip(ours.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    vit = build_backbone(cfg_for("vit_tiny", stem="cifar").model, 32)  # stem: ResNets only, not an error
    assert isinstance(vit, TimmEncoder)


def test_vit_presets_have_the_published_sizes_and_a_patch_of_an_eighth_of_the_image():
    tiny = build_backbone(cfg_for("vit_tiny").model, 32).model
    small = build_backbone(cfg_for("vit_small").model, 64).model
    assert (tiny.embed_dim, len(tiny.blocks), tiny.blocks[0].attn.num_heads) == (192, 12, 3)
    assert (small.embed_dim, len(small.blocks), small.blocks[0].attn.num_heads) == (384, 12, 6)
    assert tiny.patch_embed.patch_size == (4, 4) and tiny.pos_embed.shape == (1, 1 + 8 * 8, 192)  # class token first
    assert small.patch_embed.patch_size == (8, 8)  # 64 px // 8
    assert build_backbone(cfg_for("vit_tiny", patch_size=8).model, 32).model.pos_embed.shape == (1, 1 + 16, 192)
    assert tiny.global_pool == "token"  # features: the class token after the last LayerNorm


def test_vit_param_groups_put_position_embeddings_tokens_norms_and_biases_without_decay():
    cfg = cfg_for("vit_tiny")
    method = method_class("simclr")(build_backbone(cfg.model, 32), cfg, 100)
    decay, plain = method.param_groups(0.05, exclude_bias_and_norm=True)
    names = {id(p): n for n, p in method.named_parameters()}
    plain_names = {names[id(p)] for p in plain["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"backbone.model.pos_embed", "backbone.model.cls_token", "backbone.model.norm.weight",
            "backbone.model.norm.bias", "backbone.model.blocks.0.norm1.weight", "backbone.model.blocks.0.attn.qkv.bias",
            "backbone.model.patch_embed.proj.bias"} <= plain_names
    assert {"backbone.model.blocks.0.attn.qkv.weight", "backbone.model.patch_embed.proj.weight"} <= decay_names
    assert all(names[id(p)].endswith("weight") and p.ndim >= 2 for p in decay["params"])
    assert plain["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    assert is_norm_or_bias("backbone.model.cls_token", torch.nn.Parameter(torch.zeros(1, 1, 4)))
    assert not is_norm_or_bias("backbone.model.head.weight", torch.nn.Parameter(torch.zeros(4, 4)))
    # AdamW takes the groups (the recipes' optimiser) and a step changes the weights
    from crlf.training.optim import build_optimizer

    cfg = apply_overrides(cfg, {"optim": {"name": "adamw", "exclude_bias_and_norm": True}})
    optimizer = build_optimizer(cfg, method.param_groups(0.05, True))
    before = method.backbone.model.pos_embed.detach().clone()
    method.backbone(torch.randn(2, 3, 32, 32)).sum().backward()
    optimizer.step()
    assert not torch.equal(before, method.backbone.model.pos_embed)


def test_channels_last_is_harmless_for_a_vit():
    """build_training_modules does method.to(memory_format=channels_last) and forward_backbone feeds
    channels-last views: a ViT's one convolution (the patch embedding) takes them, with the same features."""
    torch.manual_seed(0)
    enc = build_backbone(cfg_for("vit_tiny").model, 32).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = enc(x)
        enc.to(memory_format=torch.channels_last)
        got = enc(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)  # another convolution kernel: rounding only


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny", "timm:resnet10t"])
def test_export_then_load_encoder_gives_identical_features_and_plain_timm_loads_them(arch, tmp_path):
    torch.manual_seed(0)
    cfg = cfg_for(arch)
    encoder = build_backbone(cfg.model, 32)
    encoder(torch.randn(4, 3, 32, 32))  # a train-mode step: BatchNorm running statistics move off their init
    encoder.eval()
    export_encoder(encoder, cfg, tmp_path)
    meta = json.loads((tmp_path / "config.json").read_text())
    assert meta["arch"] == arch and meta["feature_dim"] == encoder.feature_dim and meta["image_size"] == 32
    x = torch.randn(2, 3, 32, 32)
    loaded = load_encoder(tmp_path)
    assert not loaded.training
    with torch.no_grad():
        expected = encoder(x)
        assert torch.equal(loaded(x), expected)
    state = load_file(tmp_path / "encoder.safetensors")
    if arch.startswith("resnet"):
        assert meta["stem"] == "imagenet"
        import torchvision  # the "use the encoder elsewhere" snippet for ResNets: torchvision's names, no fc

        model = getattr(torchvision.models, meta["arch"])(weights=None)
        model.fc = torch.nn.Identity()
        model.load_state_dict(state)
        with torch.no_grad():
            assert torch.equal(ResNetEncoder.from_pretrained(tmp_path)(x), expected)
            torch.testing.assert_close(model.eval()(x), expected)  # untrimmed 3x3 taps: rounding only
        return
    # The "use the encoder elsewhere" snippet: plain timm, timm's own parameter names, nothing of CRLF.
    import timm

    model = timm.create_model(meta["timm_name"], pretrained=False, **meta["timm_kwargs"])
    model.load_state_dict(state)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), expected)
    if arch == "vit_tiny":
        assert meta["timm_kwargs"]["patch_size"] == 4 and meta["timm_kwargs"]["img_size"] == 32
    with pytest.raises(UsageError, match="load_encoder"):
        ResNetEncoder.from_pretrained(tmp_path)


def test_a_config_json_cannot_pass_other_arguments_to_timm(tmp_path):
    """A run folder from elsewhere must not make timm read a checkpoint (pickle) or download weights."""
    sentinel = tmp_path / "model.pth"
    (tmp_path / "config.json").write_text(json.dumps({
        "arch": "timm:resnet10t", "timm_name": "resnet10t",
        "timm_kwargs": {"num_classes": 0, "checkpoint_path": str(sentinel)}}))
    (tmp_path / "encoder.safetensors").write_bytes(b"")
    with pytest.raises(UsageError, match="checkpoint_path"):
        load_encoder(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"arch": "timm:nope", "timm_name": "no_such_model"}))
    with pytest.raises(UsageError, match="no model 'no_such_model'"):
        load_encoder(tmp_path)


@pytest.mark.parametrize("arch, hint", [("vit_tiy", "Did you mean 'vit_tiny'"),
                                        ("timm:resnet10", "Did you mean 'timm:resnet10t'"),
                                        ("resnet10t", "Did you mean 'timm:resnet10t'")])
def test_an_unknown_arch_is_a_usage_error_with_a_suggestion(arch, hint, tmp_path, capsys):
    code = main(["pretrain", "--config", str(REPO / "configs" / "fast-cpu.yaml"), "--data", str(tmp_path),
                 "--out", str(tmp_path / "r"), "--set", f"model.arch={arch}"])
    assert code == 2
    err = capsys.readouterr().err
    assert hint in err and "model.arch" in err
    assert not (tmp_path / "r").exists()


def test_a_patch_larger_than_the_smallest_view_is_a_usage_error():
    with pytest.raises(UsageError, match="smallest view"):
        load_config(REPO / "configs" / "methods" / "dino-vit.yaml", {"model": {"patch_size": 32}})  # 16-px views
    assert load_config(None, {"model": {"arch": "vit_small", "stem": "cifar", "drop_path_rate": 0.1}})
    with pytest.raises(UsageError, match="cannot build timm model 'resnet10t' with model.patch_size=4"):
        build_backbone(cfg_for("timm:resnet10t", patch_size=4).model, 32)  # a CNN has no patches


@pytest.mark.parametrize("name, arch", [("mocov3-vit", "vit_small"), ("dino-vit", "vit_tiny")])
def test_vit_recipes_name_their_source_and_use_adamw_without_decay_on_positions(name, arch):
    path = REPO / "configs" / "methods" / f"{name}.yaml"
    cfg = load_config(path)
    assert cfg.method.name == name.removesuffix("-vit") and cfg.model.arch == arch
    assert cfg.optim.name == "adamw" and cfg.optim.exclude_bias_and_norm and cfg.optim.schedule == "cosine"
    assert cfg.optim.warmup_epochs > 0
    assert "arXiv" in path.read_text().split("data:")[0]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("backbones") / "images", train_per_class=4, test_per_class=2,
                             classes=("a", "b"))


def pretrain(config: str, images, out, *extra: str) -> int:
    name = load_config(REPO / "configs" / config).method.name
    return main(["pretrain", "--config", str(REPO / "configs" / config), "--data", str(images), "--out", str(out),
                 "--epochs", "1", "--batch-size", "4", "--device", "cpu", "--threads", "1", "--quiet", *small(name),
                 *extra])


def test_fast_cpu_with_a_vit_pretrains_then_evaluate_embed_and_search_work(images, tmp_path):
    """fast-cpu.yaml's first epoch is at 16 px (progressive resizing): the ViT's 8x8 position embeddings are
    interpolated to the 4x4 grid of the views; evaluation then sees 32-px images."""
    run = tmp_path / "run"
    assert pretrain("fast-cpu.yaml", images, run, "--set", "model.arch=vit_tiny") == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert history[0]["view_size"] == 16 and np.isfinite(history[0]["loss"])
    assert (run / "encoder_vit_tiny_simclr.pth").is_file()
    assert main(["evaluate", str(run), "--device", "cpu", "--quiet"]) == 0
    assert np.load(run / "test_embeddings.npy").shape == (4, 192)
    assert main(["embed", str(run), "--data", str(images), "--out", str(tmp_path / "emb.npy"), "--quiet"]) == 0
    assert np.load(tmp_path / "emb.npy").shape == (12, 192)
    image = next((images / "test").rglob("*.png"))
    assert main(["search", str(run), str(image), "--k", "2", "--out", str(tmp_path / "grid.png")]) == 0
    assert (tmp_path / "grid.png").is_file()


@pytest.mark.parametrize("config, extra", [
    ("methods/mocov3.yaml", ["--set", "model.arch=vit_tiny"]),  # a ResNet recipe switched to a ViT
    ("methods/dino-vit.yaml", []),  # multi-crop: 2 global 32-px and 8 local 16-px views
    ("seed.yaml", ["--set", "model.arch=timm:resnet10t"]),
])
def test_other_backbones_pretrain_from_shipped_configs(config, extra, images, tmp_path):
    run = tmp_path / "run"
    assert pretrain(config, images, run, *extra) == 0
    history = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 1 and np.isfinite(history[0]["loss"])
    encoder = load_encoder(run)
    with torch.no_grad():
        assert encoder(torch.randn(2, 3, 32, 32)).shape == (2, encoder.feature_dim)


@pytest.mark.slow
@pytest.mark.parametrize("arch, feature_dim", [("vit_small", 384), ("resnet34", 512), ("resnet50", 2048),
                                               ("timm:vit_tiny_patch16_224", 192)])
def test_every_backbone_with_every_method(arch, feature_dim, tmp_path):
    """Each method's config with the backbone switched: two steps each (slow: every method x 4 backbones)."""
    from crlf.methods import METHOD_NAMES, method_class

    images = make_image_folder(tmp_path / "images", train_per_class=4, test_per_class=1, classes=("a", "b"))
    for name in METHOD_NAMES:
        if method_class(name).needs_vit and not (arch.startswith("vit") or "vit" in arch):
            continue  # MAE works on patch tokens: a ResNet is a usage error (tests/test_methods_mae.py)
        run = tmp_path / name
        assert pretrain(f"methods/{name}.yaml", images, run, "--set", f"model.arch={arch}") == 0, name
        assert load_encoder(run).feature_dim == feature_dim, name  # the published encoder is that backbone


@pytest.mark.slow
def test_the_mocov3_vit_recipe_pretrains(images, tmp_path):
    """Its ViT-Small with small heads (the dino-vit recipe runs in the default suite)."""
    assert pretrain("methods/mocov3-vit.yaml", images, tmp_path / "run") == 0
    assert load_encoder(tmp_path / "run").feature_dim == 384
