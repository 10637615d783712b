"""Two different images of one plain kind (a shape on a black ground) pass the ordinary copy levels, so an
image flagged unusual is only ever an exact copy (issue 27); an ordinary one keeps its near-copies.
Constructed images; each margin is 0.02 or more."""

from __future__ import annotations

import numpy as np

from crlf.curate.duplicates import confirmed_pairs, find_duplicates, pixel_similarity, structure_similarity


def garment(width: int, height: int, left: int, grey: int, seed: int) -> np.ndarray:
    """``(3, 32, 32)`` uint8: a pair of trousers (a block split into two legs), textured, on black."""
    rng = np.random.default_rng(seed)
    image = np.zeros((32, 32, 3), np.float32)
    image[4:4 + height, left:left + width] = grey
    image[4 + height // 3:4 + height, left + width // 2 - 1:left + width // 2 + 1] = 0  # between the legs
    image *= 1 + 0.05 * rng.normal(size=(32, 32, 1))
    return np.clip(image, 0, 255).astype(np.uint8).transpose(2, 0, 1)


def trousers_folder() -> np.ndarray:
    """``(4, 3, 32, 32)``: trousers, another pair (darker, one pixel to the right, its own texture), the
    first one mirrored, and an exact copy of the first one."""
    trousers = garment(12, 24, 10, 200, seed=0)
    return np.stack([trousers, garment(12, 24, 11, 170, seed=1), trousers[:, :, ::-1].copy(), trousers.copy()])


def test_different_plain_images_pass_the_ordinary_levels_so_unusual_ones_are_never_near_copies():
    images = trousers_folder()
    different = np.array([[0, 1]])
    # The ordinary levels (colour 0.90, edges 0.80) call the two different pairs of trousers copies ...
    assert pixel_similarity(images, different)[0] > 0.92
    ncc, edge = structure_similarity(images, different)
    assert ncc[0] > 0.92 and edge[0] > 0.85
    pairs = np.array([[0, 1], [0, 2]])
    assert confirmed_pairs(images, pairs).tolist() == [[0, 1], [0, 2]]
    # ... so a pair with an unusual image is not checked at all; the others keep the ordinary levels.
    assert confirmed_pairs(images, pairs, unusual=np.arange(3)).tolist() == []
    assert confirmed_pairs(images, pairs, unusual=np.array([1])).tolist() == [[0, 2]]


def test_an_unusual_image_still_has_its_exact_copies():
    images = trousers_folder()
    x = np.ones((4, 8), np.float32) / np.sqrt(8)  # one embedding for all: every pair is a candidate
    sims = np.ones((4, 3), np.float32)  # (N, k) the three others, at cosine 1
    idx = np.array([[j for j in range(4) if j != i] for i in range(4)])
    typicality = np.array([4.0, 3.0, 2.0, 1.0])
    groups = find_duplicates(x, images, sims, idx, typicality, unusual=np.arange(4))
    assert sorted(groups.members.tolist()) == [0, 3] and groups.keep[groups.members == 0].all()
    groups = find_duplicates(x, images, sims, idx, typicality, unusual=np.array([1]))
    assert sorted(groups.members.tolist()) == [0, 2, 3]  # the mirror image is a near-copy again
