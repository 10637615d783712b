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
