import pytest
import torch

from crlf import ResNetEncoder
from crlf.models.heads import ProjectionHead


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_encoder_output_shape(stem):
    enc = ResNetEncoder("resnet18", stem=stem).eval()
    with torch.no_grad():
        assert enc(torch.randn(2, 3, 32, 32)).shape == (2, 512)


def test_stems_differ_in_resolution():
    imagenet, cifar = ResNetEncoder(stem="imagenet"), ResNetEncoder(stem="cifar")
    assert imagenet.conv1.stride == (2, 2) and cifar.conv1.stride == (1, 1)
    assert isinstance(cifar.maxpool, torch.nn.Identity)


def test_state_dict_uses_torchvision_names():
    import torchvision

    keys = set(ResNetEncoder().state_dict())
    tv = set(torchvision.models.resnet18().state_dict())
    assert keys == tv - {"fc.weight", "fc.bias"}


def test_projection_head_is_normalised():
    head = ProjectionHead(512, 256, 64, dropout=0.1)
    z = head(torch.randn(5, 512))
    assert z.shape == (5, 64)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))


def test_rejects_pretrained_and_unknown_stem():
    with pytest.raises(ValueError):
        ResNetEncoder(stem="tiny")
    with pytest.raises(ValueError):
        ResNetEncoder(pretrained=True)


@pytest.mark.parametrize("size", [16, 32])
def test_trimmed_taps_compute_the_same_function_as_torchvision(size):
    # layer4 (and layer3 at 16 px) run on 1x1 / 2x2 maps; the trimmed convolutions must give torchvision's
    # outputs and gradients exactly (fp64, so only the summation order can differ).
    import torchvision

    from crlf.models.encoder import TapTrimmedConv2d

    torch.manual_seed(0)
    enc = ResNetEncoder().double()
    assert sum(isinstance(m, TapTrimmedConv2d) for m in enc.modules()) == 16
    ref = torchvision.models.resnet18()
    ref.fc = torch.nn.Identity()
    ref.load_state_dict(enc.state_dict(), strict=False)
    ref.double()
    x = torch.randn(6, 3, size, size, dtype=torch.float64)
    ours, theirs = enc(x), ref(x)  # (6, 512), training mode: batch statistics in BatchNorm
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-10)
    (ours ** 2).sum().backward()
    (theirs ** 2).sum().backward()
    ref_params = dict(ref.named_parameters())
    for name, p in enc.named_parameters():
        torch.testing.assert_close(p.grad, ref_params[name].grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("loader", ["from_pretrained", "load_encoder"])
def test_both_ways_of_loading_a_resnet_give_the_same_checks(loader, tmp_path):
    """ResNetEncoder.from_pretrained and crlf.load_encoder share their checks: a broken config.json, and weights
    that do not fit the arch config.json names, are usage errors naming the file (not a traceback)."""
    import json

    from safetensors.torch import save_file

    from crlf import load_encoder
    from crlf.errors import UsageError

    load = ResNetEncoder.from_pretrained if loader == "from_pretrained" else load_encoder
    (tmp_path / "config.json").write_text("{not json")
    save_file({k: v.contiguous() for k, v in ResNetEncoder("resnet18").state_dict().items()},
              str(tmp_path / "encoder.safetensors"))
    with pytest.raises(UsageError, match="config.json' is not valid JSON"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"arch": "resnet50", "stem": "imagenet"}))
    with pytest.raises(UsageError, match="does not fit the resnet50"):
        load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"arch": "resnet18", "stem": "imagenet"}))
    assert load(tmp_path)(torch.randn(1, 3, 32, 32)).shape == (1, 512)
