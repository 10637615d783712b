"""Outliers, flags and what they keep out, on constructed arrays (issue 27): a batch of one plain kind of
junk, lone oddities, small folders."""

from __future__ import annotations

import io

import numpy as np

from crlf.curate.graph import knn_graph, unit
from crlf.curate.outliers import (
    BLUR_MIN_SPREAD,
    flagged_outliers,
    image_statistics,
    outlier_scores,
    pixel_score,
    robust_z,
)
from crlf.curate.select import select

from helpers_curate import COLOURS, smooth_image


def photos(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 3, 32, 32)`` uint8 smooth colourful images, the stand-in for photographs."""
    rng = np.random.default_rng(seed)
    colours = list(COLOURS.values())
    return np.stack([smooth_image(rng, colours[i % 3]) for i in range(n)]).transpose(0, 3, 1, 2).copy()


def test_pixel_statistics_single_out_blank_grey_and_noise_frames():
    images = photos(300)
    rng = np.random.default_rng(1)
    blank = np.full((3, 32, 32), 12, np.uint8)
    grey = np.repeat(images[:1].mean(1, keepdims=True).astype(np.uint8), 3, 1)[0]
    noise = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    stats = image_statistics(np.stack([blank, grey, noise]))
    assert stats.shape == (3, 6)
    assert stats[0, 2] == 1.0 and stats[1, 0] == 0.0  # the blank frame is all flat; the grey image has no colour
    score = pixel_score(np.concatenate([images, np.stack([blank, grey, noise])]))
    assert set(np.argsort(-score)[:3].tolist()) == {300, 301, 302}
    assert score[300:].min() > 3 * np.median(score[:300])


def test_the_blur_ratio_is_one_for_noise_two_for_an_even_ramp_and_singles_out_a_blurred_photo():
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(2)
    ramp = np.broadcast_to((np.arange(32) * 6).astype(np.uint8), (3, 32, 32))  # grey rises 6 levels a pixel
    noise = rng.integers(0, 256, (3, 32, 32), dtype=np.uint8)
    ratio = image_statistics(np.stack([ramp, noise]))[:, 5]
    assert abs(ratio[0] - 2.0) < 0.01 and abs(ratio[1] - 1.0) < 0.1
    # photographs with texture; one of them blurred: its colours, brightness and contrast stay ordinary
    sharp = np.clip(photos(300, seed=3).astype(np.float32) + rng.normal(0, 10, (300, 3, 32, 32)), 0, 255).astype(np.uint8)
    blurred = np.asarray(Image.fromarray(sharp[7].transpose(1, 2, 0)).filter(ImageFilter.GaussianBlur(3)))
    score = pixel_score(np.concatenate([sharp, blurred.transpose(2, 0, 1)[None]]))
    assert score.argmax() == 300 and score[300] > np.sort(score)[-2] + 2.0


def textured(n: int, seed: int) -> np.ndarray:
    """``(n, 3, 32, 32)`` uint8 images with structure at 4 px over a random colour, of varied contrast: their
    edge energy varies as photographs' does, and their blur ratio sits near 2."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        field = rng.normal(0, 1, (8, 8, 3))
        small = ((field - field.min()) / np.ptp(field) * 255).astype(np.uint8)
        up = np.asarray(Image.fromarray(small).resize((32, 32), Image.Resampling.BICUBIC), dtype=float)
        out.append(np.clip(rng.uniform(60, 200, 3) + (up - 128) * rng.uniform(0.3, 1.2), 0, 255).astype(np.uint8))
    return np.stack(out).transpose(0, 3, 1, 2).copy()


def test_the_low_side_of_the_blur_ratio_singles_out_a_noisy_photo():
    images = textured(300, seed=6)
    # one image under a mild grey grain (sigma 6): its edge energy stays within the others' (the five
    # statistics alone put it at 3.1 robust z-units, next to the most unusual clean image's 2.7), but its
    # blur ratio drops from ~2 to ~1.5
    grain = np.random.default_rng(7).normal(0, 6, (32, 32))[None]
    noisy = np.clip(images[11].astype(np.float32) + grain, 0, 255).astype(np.uint8)
    folder = np.concatenate([images, noisy[None]])
    ratios = image_statistics(folder)[:, 5]
    assert ratios[300] < ratios[:300].min() - 0.2
    score = pixel_score(folder)
    assert score.argmax() == 300 and score[300] > np.sort(score)[-2] + 3.0


def test_a_re_encoded_copy_in_a_folder_of_alike_images_is_not_unusual_for_its_blur_ratio():
    from PIL import Image

    images = photos(60, seed=8)  # smooth fields, blur ratios within ~0.01 of each other
    buffer = io.BytesIO()
    Image.fromarray(images[5].transpose(1, 2, 0)).save(buffer, "JPEG", quality=85)
    copy = np.asarray(Image.open(buffer).convert("RGB")).transpose(2, 0, 1)
    ratios = image_statistics(np.concatenate([images, copy[None]]))[:, 5]
    assert abs(ratios[60] - np.median(ratios[:60])) < 0.1  # a change of the order of the JPEG's, no more
    assert np.abs(robust_z(ratios, BLUR_MIN_SPREAD))[60] < 2.0


def batch_folder(seed: int = 0):
    """600 unit embeddings in 6 clusters, 30 of a tight batch off in its own direction, and 5 lone rows
    scattered; their images: photos for the clusters, blank frames for the batch, noise for the lone."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.normal(size=(6, 32)))
    normal = centres[rng.integers(6, size=600)] + 0.25 * rng.normal(size=(600, 32))
    batch = unit(rng.normal(size=(1, 32))) + 0.02 * rng.normal(size=(30, 32))
    lone = rng.normal(size=(5, 32))
    x = unit(np.concatenate([normal, batch, lone]).astype(np.float32))
    images = np.concatenate([photos(600, seed), np.full((30, 3, 32, 32), 20, np.uint8),
                             rng.integers(0, 256, (5, 3, 32, 32), dtype=np.uint8)])
    return x, images, np.arange(600, 635)


def test_a_batch_and_lone_junk_fill_the_first_page():
    x, images, planted = batch_folder()
    g = knn_graph(x, 20)
    score = outlier_scores(x, g.similarities, images)
    first_page = np.argsort(-score, kind="stable")[: 2 * len(planted)]
    assert np.isin(planted, first_page).all()


def test_flags_reach_past_the_minimum_share_and_keep_the_batch_out_of_the_selection():
    x, images, planted = batch_folder()
    score = outlier_scores(x, knn_graph(x, 20).similarities, images)
    flags = flagged_outliers(score, min_share=0.01)
    assert np.isin(planted, flags).all() and len(flags) < 0.5 * len(x)  # 35 planted: far past the 1 % minimum
    picks = select(x, 30, "typical", 0, exclude=flags)
    assert not np.isin(picks, planted).any()
