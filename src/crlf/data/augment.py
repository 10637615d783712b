"""Random views of each image: two by default, or any crop spec (multi-crop).

A crop spec (``augment.crops``) asks for ``count`` views per image at ``size`` pixels from crops covering
``scale`` of the image; the views come back as a list of ``(B, 3, S, S)`` batches in spec order, the first
spec's (global) views first.

``TensorAugment`` (the default ``tensor`` backend) builds views for a whole batch in a handful of tensor
operations on the compute device, with **per-sample** random parameters: each image gets its own crop,
flip, jitter factors (applied in its own random order, as torchvision's ColorJitter does), grayscale
coin and blur sigma. torchvision's ``transforms.v2`` applied to a batched tensor would draw *one* set of
parameters for the whole batch, so every image would get the same crop: wrong for contrastive views.
kornia.augmentation does per-sample parameters but adds a dependency for what is here ~150 lines.

``PILAugment`` (the ``pil`` backend) is the reference's per-image torchvision pipeline, kept to check
the fidelity of the tensor backend.

Parameters are drawn on the CPU from a seeded ``torch.Generator`` (a few numbers per image), then
applied on the device: the same seed gives the same views on every device, and resuming a run only
needs that generator's state.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from crlf.config import AugmentConfig

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision's rgb_to_grayscale


def normalize(images_uint8: torch.Tensor, mean, std) -> torch.Tensor:
    """uint8 ``(B, 3, H, W)`` -> float32 normalised; the un-augmented view used for evaluation."""
    return normalize_float(images_uint8.float().div_(255.0), mean, std)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)  # (B, 1, H, W)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    # Same formulas as torchvision's _rgb2hsv, batched.
    r, g, b = x.unbind(1)
    maxc, _ = x.max(1)
    minc, _ = x.min(1)
    eqc = maxc == minc
    cr = maxc - minc
    ones = torch.ones_like(maxc)
    s = cr / torch.where(eqc, ones, maxc)
    cr_divisor = torch.where(eqc, ones, cr)
    rc, gc, bc = (maxc - r) / cr_divisor, (maxc - g) / cr_divisor, (maxc - b) / cr_divisor
    hr = (maxc == r) * (bc - gc)
    hg = ((maxc == g) & (maxc != r)) * (2.0 + rc - bc)
    hb = ((maxc != g) & (maxc != r)) * (4.0 + gc - rc)
    h = torch.fmod((hr + hg + hb) / 6.0 + 1.0, 1.0)
    return torch.stack((h, s, maxc), 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.to(torch.int64) % 6
    p = (v * (1.0 - s)).clamp(0, 1)
    q = (v * (1.0 - s * f)).clamp(0, 1)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0, 1)
    mask = i.unsqueeze(1) == torch.arange(6, device=x.device).view(1, -1, 1, 1)  # (B, 6, H, W)
    a1 = torch.stack((v, q, p, p, t, v), 1)
    a2 = torch.stack((t, v, v, q, p, p), 1)
    a3 = torch.stack((p, p, t, v, v, q), 1)
    a4 = torch.stack((a1, a2, a3), 1)  # (B, 3, 6, H, W)
    return torch.einsum("bkhw,bckhw->bchw", mask.to(x.dtype), a4)


def _adjust_hue(x: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = torch.remainder(hsv[:, 0] + hue.view(-1, 1, 1), 1.0)
    return _hsv_to_rgb(hsv)


class ViewSpec(NamedTuple):
    """``count`` views per image at ``size`` px, from random crops covering ``scale`` of the image's area."""

    size: int
    count: int
    scale: tuple[float, float]


def blur_kernel_size(cfg: AugmentConfig, side: int) -> int:
    """The Gaussian blur's kernel for views of ``side`` pixels: ``augment.blur_kernel`` pixels, or with
    ``augment.blur_kernel_fraction`` > 0 that fraction of the side, made odd as SimCLR does
    (``radius = int(fraction * side) // 2``): one recipe then blurs alike at 32, 64 and 96 px."""
    if cfg.blur_kernel_fraction <= 0:
        return cfg.blur_kernel
    return 2 * (int(cfg.blur_kernel_fraction * side + 1e-9) // 2) + 1  # 1e-9: 0.1 * 70 must give 7, not 6


def view_specs(cfg: AugmentConfig, image_size: int, view_size: int | None = None) -> list[ViewSpec]:
    """The crop specs of ``augment.crops`` resolved for an epoch whose global views are ``view_size`` px
    (``image_size``, or less during progressive resizing): every crop's side scales with it (a 16-px local
    crop of a 32-px recipe is 8 px during 16-px epochs), and never drops below 4 px."""
    view_size = view_size or image_size
    specs = []
    for crop in cfg.crops:
        size = crop.size if crop.size is not None else image_size
        specs.append(ViewSpec(max(4, round(size * view_size / image_size)), crop.count,
                              crop.scale if crop.scale is not None else cfg.crop_scale))
    return specs


class TensorAugment:
    """Batched views with per-sample random parameters (see the module docstring)."""

    def __init__(self, cfg: AugmentConfig, out_size: int):
        self.cfg = cfg
        self.out_size = out_size  # the side of the views when no crop specs are given

    # -- parameters (CPU, seeded) -------------------------------------------------------------------
    def sample_params(self, n: int, height: int, width: int, gen: torch.Generator,
                      crop_scale: tuple[float, float] | None = None) -> dict[str, torch.Tensor]:
        c = self.cfg
        crop_scale = crop_scale or c.crop_scale
        attempts = 10  # torchvision's RandomResizedCrop tries 10 boxes, then falls back to a centre crop
        area = height * width
        scale = torch.empty(n, attempts).uniform_(crop_scale[0], crop_scale[1], generator=gen)
        log_ratio = torch.empty(n, attempts).uniform_(math.log(c.crop_ratio[0]), math.log(c.crop_ratio[1]), generator=gen)
        ratio = torch.exp(log_ratio)
        w = torch.round(torch.sqrt(area * scale * ratio))  # (n, attempts)
        h = torch.round(torch.sqrt(area * scale / ratio))
        ok = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = ok.float().argmax(1)  # index of the first valid attempt
        w = w.gather(1, first[:, None]).squeeze(1)
        h = h.gather(1, first[:, None]).squeeze(1)
        any_ok = ok.any(1)
        w = torch.where(any_ok, w, torch.full_like(w, width))
        h = torch.where(any_ok, h, torch.full_like(h, height))
        u_top, u_left = torch.rand(n, generator=gen), torch.rand(n, generator=gen)
        top = torch.floor(u_top * (height - h + 1)).clamp(max=height - h)
        left = torch.floor(u_left * (width - w + 1)).clamp(max=width - w)
        top = torch.where(any_ok, top, (height - h) // 2)
        left = torch.where(any_ok, left, (width - w) // 2)
        flip = torch.rand(n, generator=gen) < c.flip_p
        jitter = torch.rand(n, generator=gen) < c.jitter_p
        bri = torch.empty(n).uniform_(max(0.0, 1 - c.brightness), 1 + c.brightness, generator=gen)
        con = torch.empty(n).uniform_(max(0.0, 1 - c.contrast), 1 + c.contrast, generator=gen)
        sat = torch.empty(n).uniform_(max(0.0, 1 - c.saturation), 1 + c.saturation, generator=gen)
        hue = torch.empty(n).uniform_(-c.hue, c.hue, generator=gen)
        order = torch.rand(n, 4, generator=gen).argsort(1)  # per-sample order of the 4 jitter ops
        gray = torch.rand(n, generator=gen) < c.grayscale_p
        blur = torch.rand(n, generator=gen) < c.blur_p
        sigma = torch.empty(n).uniform_(c.blur_sigma[0], c.blur_sigma[1], generator=gen)
        return dict(top=top, left=left, h=h, w=w, flip=flip, jitter=jitter, bri=bri, con=con, sat=sat, hue=hue,
                    order=order, gray=gray, blur=blur, sigma=sigma)

    # -- application (device) -----------------------------------------------------------------------
    def apply(self, images: torch.Tensor, p: dict[str, torch.Tensor], size: int | None = None) -> torch.Tensor:
        """uint8 ``(B, 3, H, W)`` on the device + parameters -> normalised float32 ``(B, 3, S, S)``."""
        device = images.device
        p = {k: v.to(device, non_blocking=True) for k, v in p.items()}
        n, _, height, width = images.shape
        x = images.float().div_(255.0)  # (B, 3, H, W) in [0, 1]
        x = self._resized_crop_flip(x, p, height, width, size or self.out_size)  # (B, 3, S, S)
        if bool(p["jitter"].any()):
            x = self._color_jitter(x, p)
        x = torch.where(p["gray"].view(-1, 1, 1, 1), _grayscale(x).expand_as(x), x)
        kernel = blur_kernel_size(self.cfg, x.shape[-1])  # of this view's side
        if kernel > 1 and bool(p["blur"].any()):
            x = self._gaussian_blur(x, p, kernel)
        return normalize_float(x, self.cfg.mean, self.cfg.std)

    def _resized_crop_flip(self, x, p, height, width, size) -> torch.Tensor:
        # One affine_grid/grid_sample does crop + resize + flip for every image at once. Box edges are in
        # pixel units; with align_corners=False the output pixel centres land where a bilinear resize of
        # the cropped box puts them.
        scale_x, scale_y = p["w"] / width, p["h"] / height
        centre_x = (p["left"] + p["w"] / 2) / width * 2 - 1
        centre_y = (p["top"] + p["h"] / 2) / height * 2 - 1
        scale_x = torch.where(p["flip"], -scale_x, scale_x)
        theta = torch.zeros(x.shape[0], 2, 3, device=x.device)
        theta[:, 0, 0], theta[:, 0, 2] = scale_x, centre_x
        theta[:, 1, 1], theta[:, 1, 2] = scale_y, centre_y
        grid = F.affine_grid(theta, [x.shape[0], 3, size, size], align_corners=False)  # (B, S, S, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _color_jitter(self, x, p) -> torch.Tensor:
        # Each jittered image applies its 4 ops in its own random order: in slot k, the images whose k-th
        # op is brightness get brightness, and so on. Each op runs only on the images that take it in that
        # slot (index_select / index_copy_), so a slot touches every image once instead of once per op.
        jittered = torch.nonzero(p["jitter"]).squeeze(1)  # (J,)
        if not jittered.numel():
            return x
        y = x.index_select(0, jittered)  # (J, 3, S, S)
        order = p["order"].index_select(0, jittered)  # (J, 4)
        bri, con, sat, hue = (p[k].index_select(0, jittered) for k in ("bri", "con", "sat", "hue"))
        for slot in range(4):
            for op in range(4):
                chosen = order[:, slot] == op
                if op == 3:
                    chosen &= hue != 0  # a hue shift of 0 is the identity (and the costly op: skip it)
                sel = torch.nonzero(chosen).squeeze(1)
                if not sel.numel():
                    continue
                part = y.index_select(0, sel)  # (n, 3, S, S)
                if op == 0:
                    part = _blend(part, torch.zeros_like(part), bri[sel])
                elif op == 1:
                    part = _blend(part, _grayscale(part).mean(dim=(1, 2, 3), keepdim=True), con[sel])
                elif op == 2:
                    part = _blend(part, _grayscale(part), sat[sel])
                else:
                    part = _adjust_hue(part, hue[sel])
                y.index_copy_(0, sel, part)
        return x.index_copy(0, jittered, y)

    def _gaussian_blur(self, x, p, kernel: int | None = None) -> torch.Tensor:
        k = kernel or self.cfg.blur_kernel
        n, c, h, w = x.shape
        offsets = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2  # (K,)
        kernel = torch.exp(-0.5 * (offsets.view(1, -1) / p["sigma"].view(-1, 1)) ** 2)  # (B, K)
        kernel = kernel / kernel.sum(1, keepdim=True)
        identity = (offsets == 0).to(x.dtype).expand_as(kernel)
        kernel = torch.where(p["blur"].view(-1, 1), kernel, identity)
        kernel = kernel.repeat_interleave(c, 0)  # (B*C, K): one kernel per channel of each image
        pad = k // 2
        y = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode="reflect")
        y = F.conv2d(y, kernel.view(n * c, 1, 1, k), groups=n * c)  # horizontal pass
        y = F.conv2d(y, kernel.view(n * c, 1, k, 1), groups=n * c)  # vertical pass
        return y.view(n, c, h, w)

    def __call__(self, images: torch.Tensor, gen: torch.Generator,
                 specs: list[ViewSpec] | None = None) -> list[torch.Tensor]:
        """Independent views of each image, ``(B, 3, S, S)`` each: per spec, ``count`` views at its size
        (default: two at ``out_size``). Each view draws its parameters, then is built, in turn."""
        n, _, h, w = images.shape
        specs = specs or [ViewSpec(self.out_size, 2, self.cfg.crop_scale)]
        return [self.apply(images, self.sample_params(n, h, w, gen, spec.scale), spec.size)
                for spec in specs for _ in range(spec.count)]


def normalize_float(x: torch.Tensor, mean, std) -> torch.Tensor:
    mean_t = torch.tensor(mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean_t) / std_t


class PILAugment:
    """The reference's per-image torchvision pipeline (slow; for fidelity checks)."""

    def __init__(self, cfg: AugmentConfig, out_size: int):
        self.cfg = cfg
        self.out_size = out_size
        self._transforms: dict = {}

    def transform(self, size: int):
        if size not in self._transforms:
            self._transforms[size] = self._build(size)
        return self._transforms[size]

    def _build(self, out_size: int):
        from torchvision import transforms as T

        cfg = self.cfg
        steps = [
            T.RandomResizedCrop(out_size, scale=tuple(cfg.crop_scale), ratio=tuple(cfg.crop_ratio)),
            T.RandomHorizontalFlip(cfg.flip_p),
            T.RandomApply([T.ColorJitter(cfg.brightness, cfg.contrast, cfg.saturation, cfg.hue)], p=cfg.jitter_p),
            T.RandomGrayscale(cfg.grayscale_p),
        ]
        kernel = blur_kernel_size(cfg, out_size)
        if kernel > 1 and cfg.blur_p > 0:
            blur = T.GaussianBlur(kernel, sigma=tuple(cfg.blur_sigma))
            steps.append(blur if cfg.blur_p >= 1 else T.RandomApply([blur], p=cfg.blur_p))
        steps += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
        return T.Compose(steps)

    def __call__(self, images: torch.Tensor, gen: torch.Generator,
                 specs: list[ViewSpec] | None = None) -> list[torch.Tensor]:
        """Two views per image (the reference's pipeline; config validation allows no other crop spec)."""
        from PIL import Image

        size = specs[0].size if specs else self.out_size
        # torchvision's transforms draw from torch's global RNG: seed it from our generator inside fork_rng
        # so runs stay reproducible and resumable without disturbing anything else.
        seed = int(torch.randint(0, 2**62, (1,), generator=gen))
        array = images.cpu().numpy().transpose(0, 2, 3, 1)  # (B, H, W, 3)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            pils = [Image.fromarray(np.ascontiguousarray(a)) for a in array]
            transform = self.transform(size)
            v1 = torch.stack([transform(im) for im in pils])
            v2 = torch.stack([transform(im) for im in pils])
        return [v1.to(images.device), v2.to(images.device)]


def build_augment(cfg: AugmentConfig, out_size: int):
    return TensorAugment(cfg, out_size) if cfg.backend == "tensor" else PILAugment(cfg, out_size)
