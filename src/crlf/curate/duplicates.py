"""Exact and near-duplicate images, grouped; one image kept per group.

Embedding similarity alone is not precise enough: with a 56 %-linear CIFAR-10 encoder, planted near-copies
have cosine similarity 0.95-0.98 but so do plenty of distinct images of one kind (issue 19). So embeddings
only propose candidate pairs (neighbours above ``threshold``) and pixels decide: each image's colour
thumbnail is compared with aligned views of the other one (flipped or not, cropped at a few scales and
offsets: the edits a copy goes through) by normalised cross-correlation. Exact copies (identical decoded
pixels) are found by hashing and need no threshold.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch
from torchvision.ops import roi_align

from crlf.curate import DUP_THRESHOLD, PIXEL_THRESHOLD

THUMB = 16  # thumbnail side for the pixel check
SCALES = (1.0, 0.9, 0.8)  # side of the crop a copy may be: 0.8 x 0.8 = 64 % of the area, below the 80 % asked
OFFSETS = 3  # positions per axis of each crop (corners and centre)


@dataclass
class Groups:
    group: np.ndarray  # (M,) group number of each member, 0.. in order of size
    members: np.ndarray  # (M,) row numbers
    keep: np.ndarray  # (M,) bool: exactly one True per group
    similarity: np.ndarray  # (M,) cosine similarity of the member to its group's kept image (1.0 for it)

    def dropped(self) -> np.ndarray:
        """Rows of the images a user may remove (in a group, not kept)."""
        return self.members[~self.keep]


def exact_pairs(images: np.ndarray) -> np.ndarray:
    """Pairs ``(P, 2)`` of rows with byte-identical decoded pixels, ``images`` ``(N, 3, S, S)`` uint8: each
    row paired with the first row of its hash."""
    first: dict[bytes, int] = {}
    pairs = []
    for i in range(len(images)):
        digest = hashlib.blake2b(np.ascontiguousarray(images[i]).tobytes(), digest_size=16).digest()
        j = first.setdefault(digest, i)
        if j != i:
            pairs.append((j, i))
    return np.asarray(pairs, dtype=np.int64).reshape(-1, 2)


def candidate_pairs(sims: np.ndarray, idx: np.ndarray, threshold: float) -> np.ndarray:
    """Neighbour pairs ``(P, 2)`` (i < j, each once) with cosine similarity >= ``threshold``, from a graph
    ``sims``, ``idx`` ``(N, k)``."""
    rows, cols = np.nonzero(sims >= threshold)
    a, b = rows, idx[rows, cols]
    pairs = np.stack([np.minimum(a, b), np.maximum(a, b)], 1)  # (P, 2)
    return np.unique(pairs, axis=0) if len(pairs) else pairs.reshape(0, 2).astype(np.int64)


def _float(images: np.ndarray) -> torch.Tensor:
    """uint8 ``(B, 3, S, S)`` -> float ``(B, 3, S, S)``."""
    return torch.from_numpy(np.ascontiguousarray(images)).float()


def _boxes(side: int) -> torch.Tensor:
    """Crop boxes ``(V, 4)`` (x1, y1, x2, y2): every scale at OFFSETS x OFFSETS positions."""
    boxes = []
    for s in SCALES:
        w = side * s
        for oy in np.linspace(0, side - w, OFFSETS if s < 1 else 1):
            for ox in np.linspace(0, side - w, OFFSETS if s < 1 else 1):
                boxes.append((ox, oy, ox + w, oy + w))
    return torch.tensor(boxes, dtype=torch.float32)


def _standardise(t: torch.Tensor) -> torch.Tensor:
    """Thumbnails ``(..., 3*T*T)`` -> zero mean, unit norm, over the three channels together: a copy may be
    brighter or of higher contrast (re-encoding), but a change of tint changes the pattern. A flat thumbnail
    (std under 2 grey levels) stays near zero, so two plain frames are not called copies by correlation."""
    t = t - t.mean(-1, keepdim=True)
    return t / t.norm(dim=-1, keepdim=True).clamp_min(2.0 * t.shape[-1] ** 0.5)


def thumbnails(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """(whole image ``(B, 3*T*T)``, aligned views ``(B, V, 3*T*T)``: crops at SCALES, each also mirrored),
    standardised, for ``images`` ``(B, 3, S, S)`` uint8."""
    x = _float(images)  # (B, 3, S, S)
    b, side = len(x), x.shape[-1]
    boxes = _boxes(side)  # (v, 4)
    rois = torch.cat([torch.arange(b).repeat_interleave(len(boxes))[:, None].float(), boxes.repeat(b, 1)], 1)
    size = 3 * THUMB * THUMB
    views = roi_align(x, rois, THUMB, spatial_scale=1.0, sampling_ratio=2, aligned=True).reshape(b, len(boxes), size)
    mirrored = roi_align(x.flip(-1), rois, THUMB, 1.0, 2, True).reshape(b, len(boxes), size)  # (B, v, 3*T*T)
    whole = views[:, 0]  # the first box is the whole image
    return _standardise(whole), _standardise(torch.cat([views, mirrored], 1))  # (B, 3*T*T), (B, 2v, 3*T*T)


def pixel_similarity(images: np.ndarray, pairs: np.ndarray, batch: int = 1024, progress: bool = False) -> np.ndarray:
    """Best normalised cross-correlation ``(P,)`` between one image of each pair and any aligned view of the
    other (both ways round): near 1 for a crop, flip or re-encoding of the same picture.

    Thumbnails are made per batch of pairs, never for all images at once: 50,000 images x 56 views would
    hold 2.9 GB."""
    from tqdm.auto import tqdm

    out = np.zeros(len(pairs), dtype=np.float32)
    for start in tqdm(range(0, len(pairs), batch), desc="pixel check", unit="batch", disable=not progress,
                      leave=False):
        chunk = pairs[start:start + batch]  # (p, 2)
        rows, inverse = np.unique(chunk, return_inverse=True)
        whole, views = thumbnails(images[rows])  # (r, 3*T*T), (r, V, 3*T*T)
        a, b = torch.from_numpy(inverse.reshape(-1, 2)[:, 0]), torch.from_numpy(inverse.reshape(-1, 2)[:, 1])
        ab = torch.einsum("pd,pvd->pv", whole[a], views[b]).amax(1)  # a against b's views, (p,)
        ba = torch.einsum("pd,pvd->pv", whole[b], views[a]).amax(1)  # b against a's views
        out[start:start + batch] = torch.maximum(ab, ba).numpy()
    return out


def connected_groups(n: int, pairs: np.ndarray) -> list[np.ndarray]:
    """Connected components of two or more rows of the graph with edges ``pairs`` ``(P, 2)``, largest first."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(pairs):
        return []
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, label = connected_components(graph, directed=False)
    counts = np.bincount(label)
    groups = [np.flatnonzero(label == g) for g in np.flatnonzero(counts >= 2)]
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def find_duplicates(embeddings: np.ndarray, images: np.ndarray, sims: np.ndarray, idx: np.ndarray,
                    typicality: np.ndarray, threshold: float = DUP_THRESHOLD,
                    pixel_threshold: float = PIXEL_THRESHOLD, progress: bool = False) -> Groups:
    """Groups of exact and confirmed near-duplicates; in each, the most typical image is kept.

    ``embeddings`` ``(N, D)`` unit rows, ``images`` ``(N, 3, S, S)`` uint8, the graph ``sims``/``idx``
    ``(N, k)``, ``typicality`` ``(N,)``."""
    candidates = candidate_pairs(sims, idx, threshold)
    near = candidates[pixel_similarity(images, candidates, progress=progress) >= pixel_threshold]
    pairs = np.concatenate([exact_pairs(images), near])
    group, members, keep, similarity = [], [], [], []
    for g, rows in enumerate(connected_groups(len(images), pairs)):
        kept = rows[np.argmax(typicality[rows])]
        group.append(np.full(len(rows), g))
        members.append(rows)
        keep.append(rows == kept)
        similarity.append(np.clip(embeddings[rows] @ embeddings[kept], -1.0, 1.0))  # (m,)
    if not group:
        empty = np.zeros(0, dtype=np.int64)
        return Groups(empty, empty, np.zeros(0, bool), np.zeros(0, np.float32))
    return Groups(np.concatenate(group), np.concatenate(members), np.concatenate(keep),
                  np.concatenate(similarity).astype(np.float32))
