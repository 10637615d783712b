import dataclasses

import pytest
import torch
import torchvision.transforms.v2.functional as TF

from crlf.config import AugmentConfig
from crlf.data.augment import PILAugment, TensorAugment, build_augment

CFG = AugmentConfig()
MEAN = torch.tensor(CFG.mean).view(1, 3, 1, 1)
STD = torch.tensor(CFG.std).view(1, 3, 1, 1)


def images(n=16, size=32, seed=0):
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(seed))


def unnormalize(x):
    return x * STD + MEAN


@pytest.mark.parametrize("backend", ["tensor", "pil"])
def test_views_shape_dtype_and_range(backend):
    aug = build_augment(dataclasses.replace(CFG, backend=backend), 32)
    v1, v2 = aug(images(), torch.Generator().manual_seed(0))
    for v in (v1, v2):
        assert v.shape == (16, 3, 32, 32) and v.dtype == torch.float32
        pixels = unnormalize(v)
        assert pixels.min() >= -1e-4 and pixels.max() <= 1 + 1e-4


def test_output_size_differs_from_input_size():
    v1, _ = TensorAugment(CFG, 24)(images(4, 40), torch.Generator().manual_seed(0))
    assert v1.shape == (4, 3, 24, 24)


def test_parameters_are_drawn_per_sample():
    # The same image repeated: per-sample parameters must still give different views.
    batch = images(1).repeat(8, 1, 1, 1)
    v1, v2 = TensorAugment(CFG, 32)(batch, torch.Generator().manual_seed(0))
    distinct = {tuple(v.flatten()[:64].tolist()) for v in v1}
    assert len(distinct) == 8
    assert not torch.allclose(v1, v2)
    params = TensorAugment(CFG, 32).sample_params(64, 32, 32, torch.Generator().manual_seed(1))
    for key in ("top", "left", "h", "w", "bri", "sigma"):
        assert params[key].unique().numel() > 1, key


def test_same_seed_same_views():
    a = TensorAugment(CFG, 32)(images(), torch.Generator().manual_seed(3))
    b = TensorAugment(CFG, 32)(images(), torch.Generator().manual_seed(3))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    p = PILAugment(CFG, 32)(images(), torch.Generator().manual_seed(3))
    q = PILAugment(CFG, 32)(images(), torch.Generator().manual_seed(3))
    assert torch.equal(p[0], q[0])


def test_crop_boxes_follow_random_resized_crop_rules():
    p = TensorAugment(CFG, 32).sample_params(4096, 32, 32, torch.Generator().manual_seed(0))
    area = p["h"] * p["w"] / (32 * 32)
    assert area.min() >= 0.2 - 0.05 and area.max() <= 1.0
    assert (p["top"] >= 0).all() and (p["top"] + p["h"] <= 32).all()
    assert (p["left"] >= 0).all() and (p["left"] + p["w"] <= 32).all()
    assert 0.45 < p["flip"].float().mean() < 0.55
    assert 0.75 < p["jitter"].float().mean() < 0.85
    assert 0.17 < p["gray"].float().mean() < 0.23


def reference_view(image: torch.Tensor, p: dict, i: int, cfg: AugmentConfig, size: int) -> torch.Tensor:
    """torchvision's functional ops, one image at a time, with the tensor backend's parameters."""
    x = image.float() / 255
    x = TF.resized_crop(x, int(p["top"][i]), int(p["left"][i]), int(p["h"][i]), int(p["w"][i]), [size, size],
                        antialias=True)
    if p["flip"][i]:
        x = TF.horizontal_flip(x)
    if p["jitter"][i]:
        for op in p["order"][i].tolist():
            if op == 0:
                x = TF.adjust_brightness(x, float(p["bri"][i]))
            elif op == 1:
                x = TF.adjust_contrast(x, float(p["con"][i]))
            elif op == 2:
                x = TF.adjust_saturation(x, float(p["sat"][i]))
            else:
                x = TF.adjust_hue(x, float(p["hue"][i]))
    if p["gray"][i]:
        x = TF.rgb_to_grayscale(x, num_output_channels=3)
    if p["blur"][i]:
        s = float(p["sigma"][i])
        x = TF.gaussian_blur(x, [cfg.blur_kernel, cfg.blur_kernel], [s, s])
    return TF.normalize(x, list(cfg.mean), list(cfg.std))


def test_colour_and_blur_match_torchvision_exactly():
    # No crop: every other op must agree with torchvision's own functional implementation.
    cfg = dataclasses.replace(CFG, crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), jitter_p=0.9, grayscale_p=0.3)
    aug = TensorAugment(cfg, 32)
    batch = images(48)
    p = aug.sample_params(48, 32, 32, torch.Generator().manual_seed(5))
    ours = aug.apply(batch, p)
    ref = torch.stack([reference_view(batch[i], p, i, cfg, 32) for i in range(48)])
    torch.testing.assert_close(ours, ref, atol=2e-4, rtol=0)


def test_crop_resize_close_to_torchvision():
    # grid_sample reads up to half a pixel past the crop box at its border where resize clamps: close, not equal.
    cfg = dataclasses.replace(CFG, jitter_p=0.0, grayscale_p=0.0, blur_p=0.0)
    aug = TensorAugment(cfg, 32)
    batch = images(48)
    p = aug.sample_params(48, 32, 32, torch.Generator().manual_seed(6))
    ours = unnormalize(aug.apply(batch, p))
    ref = unnormalize(torch.stack([reference_view(batch[i], p, i, cfg, 32) for i in range(48)]))
    interior = (slice(None), slice(None), slice(2, -2), slice(2, -2))
    assert (ours - ref)[interior].abs().mean() < 0.01
    assert (ours - ref).abs().mean() < 0.03


def test_statistics_match_pil_backend():
    torch.manual_seed(0)
    batch = images(512, seed=1)
    t1, _ = TensorAugment(CFG, 32)(batch, torch.Generator().manual_seed(0))
    p1, _ = PILAugment(CFG, 32)(batch, torch.Generator().manual_seed(0))
    t1, p1 = unnormalize(t1), unnormalize(p1)
    assert (t1.mean() - p1.mean()).abs() < 0.02
    assert (t1.std() - p1.std()).abs() < 0.02
