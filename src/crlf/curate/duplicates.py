"""Exact and near-duplicate images, grouped; one image kept per group.

Embedding similarity alone is not precise enough: with a 56 %-linear CIFAR-10 encoder, planted near-copies
have cosine similarity 0.95-0.98 but so do plenty of distinct images of one kind (issue 19). So embeddings
only propose candidate pairs (neighbours above ``threshold``) and pixels decide, in two passes:

1. every candidate: each image's 12-px colour thumbnail against aligned views of the other one (flipped or
   not, cropped at a few scales and offsets: the edits a copy goes through), by normalised
   cross-correlation (NCC);
2. the pairs that pass: the same on 16-px thumbnails with a finer alignment, then the correlation of the
   grey-level *edges* (finite differences) of the best-aligned pair. Colour correlation is dominated by
   the broad shading of an image, so two different small aeroplanes on the same blue sky correlate at
   0.9-0.97; their edges do not (0.25-0.77 on CIFAR-10, against 0.87 or more for planted copies:
   BENCHMARKS.md, "Curation").

Exact copies (identical decoded pixels) are found by hashing and need no threshold.

An image the outlier score flags as unusual (``unusual``: score >= ``COPY_FLAG_Z``) is never called a
near-copy, only an exact one: junk of one plain kind correlates with itself whatever is on it (five
different trousers on black passed both passes: issue 27), and stricter levels for two plain unusual images
still let through pairs of different silhouettes, blurred photographs and screenshots.
bench/curate_loso.py chose this rule and the level leave-one-set-out (BENCHMARKS.md, issue 27).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import torch

from crlf.curate import DUP_THRESHOLD, EDGE_THRESHOLD, PIXEL_THRESHOLD


@dataclass(frozen=True)
class Alignment:
    """The views of an image that a copy is compared with: crops whose side is each of ``scales`` of the
    image's (0.9 x 0.9 = 81 %: a crop of >= 80 % of the area), at ``offsets`` positions per axis (corners and
    centre, and between), each also mirrored; every view resampled to a ``thumb`` x ``thumb`` thumbnail."""

    thumb: int
    scales: tuple[float, ...]
    offsets: int


COARSE = Alignment(12, (1.0, 0.9), 3)  # every candidate pair: 38 views
FINE = Alignment(16, (1.0, 0.95, 0.9), 5)  # the pairs that pass: 102 views


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


def _area_weights(start: int, width: int, side: int, thumb: int) -> np.ndarray:
    """``(T, side)`` weights that average ``[start, start + width)`` into ``T`` = ``thumb`` equal cells (area
    resampling, the antialiased downscale), as one matrix: resizing a crop is then a matrix product."""
    edges = start + np.arange(thumb + 1) * width / thumb  # (T+1,) cell borders in source pixels
    pixels = np.arange(side)
    overlap = np.clip(np.minimum(edges[1:, None], pixels + 1) - np.maximum(edges[:-1, None], pixels), 0, None)
    return overlap / overlap.sum(1, keepdims=True)  # (T, side)


def _resamplers(side: int, align: Alignment) -> tuple[torch.Tensor, torch.Tensor]:
    """Row and column resampling matrices ``(V, T, side)`` of every view: the whole image, then crops of
    ``align.scales`` at ``align.offsets`` x ``align.offsets`` integer positions; then all of them again on the
    mirrored image."""
    rows, cols = [], []
    for s in align.scales:
        w = int(round(side * s))
        starts = sorted({int(round(v)) for v in np.linspace(0, side - w, align.offsets if w < side else 1)})
        for oy in starts:
            for ox in starts:
                rows.append(_area_weights(oy, w, side, align.thumb))
                cols.append(_area_weights(ox, w, side, align.thumb))
    rows, cols = np.stack(rows), np.stack(cols)
    mirrored = cols[:, :, ::-1]  # a crop of the mirror image: the same rows, the columns read right to left
    return (torch.tensor(np.concatenate([rows, rows]), dtype=torch.float32),
            torch.tensor(np.concatenate([cols, mirrored]), dtype=torch.float32))


def _standardise(t: torch.Tensor) -> torch.Tensor:
    """Thumbnails ``(..., 3*T*T)`` -> zero mean, unit norm, over the three channels together: a copy may be
    brighter or of higher contrast (re-encoding), but a change of tint changes the pattern. A flat thumbnail
    (std under 2 grey levels) stays near zero, so two plain frames are not called copies by correlation."""
    t = t - t.mean(-1, keepdim=True)
    return t / t.norm(dim=-1, keepdim=True).clamp_min(2.0 * t.shape[-1] ** 0.5)


def aligned_views(images: np.ndarray, align: Alignment = COARSE, chunk: int = 256) -> torch.Tensor:
    """Every view of ``align`` of ``images`` ``(B, 3, S, S)`` uint8, as float thumbnails ``(B, V, 3, T, T)``;
    view 0 is the whole image. Each view is ``R_rows @ X @ R_cols^T`` per channel: two small products
    instead of a resampling call per crop (an order of magnitude faster on a CPU)."""
    x = _float(images)  # (B, 3, S, S)
    rows, cols = _resamplers(x.shape[-1], align)  # (V, T, S) each
    out = []
    for start in range(0, len(x), chunk):
        tmp = torch.einsum("vts,bcsu->bvctu", rows, x[start:start + chunk])  # (b, V, 3, T, S): rows resampled
        out.append(torch.einsum("bvctu,vwu->bvctw", tmp, cols))  # (b, V, 3, T, T)
    return torch.cat(out)


def thumbnails(images: np.ndarray, align: Alignment = COARSE) -> tuple[torch.Tensor, torch.Tensor]:
    """(whole image ``(B, 3*T*T)``, aligned views ``(B, V, 3*T*T)``), standardised, for ``images``
    ``(B, 3, S, S)`` uint8."""
    views = _standardise(aligned_views(images, align).flatten(2))
    return views[:, 0], views  # the first view is the whole image


def _pair_batches(pairs: np.ndarray, batch: int, desc: str, progress: bool):
    """(start, rows ``(r,)``, a ``(p,)``, b ``(p,)``) per batch of ``pairs`` ``(P, 2)``: the distinct rows the
    batch names and each pair's two positions among them. Thumbnails are made per batch, never for all
    images at once (50,000 images x 38 views would hold 2 GB)."""
    from tqdm.auto import tqdm

    for start in tqdm(range(0, len(pairs), batch), desc=desc, unit="batch", disable=not progress, leave=False):
        rows, inverse = np.unique(pairs[start:start + batch], return_inverse=True)
        inverse = torch.from_numpy(inverse.reshape(-1, 2))
        yield start, rows, inverse[:, 0], inverse[:, 1]


def pixel_similarity(images: np.ndarray, pairs: np.ndarray, batch: int = 1024, progress: bool = False,
                     align: Alignment = COARSE) -> np.ndarray:
    """Best normalised cross-correlation ``(P,)`` between one image of each pair and any aligned view of the
    other (both ways round): near 1 for a crop, flip or re-encoding of the same picture."""
    out = np.zeros(len(pairs), dtype=np.float32)
    for start, rows, a, b in _pair_batches(pairs, batch, "pixel check", progress):
        whole, views = thumbnails(images[rows], align)  # (r, 3*T*T), (r, V, 3*T*T)
        ab = torch.einsum("pd,pvd->pv", whole[a], views[b]).amax(1)  # a against b's views, (p,)
        ba = torch.einsum("pd,pvd->pv", whole[b], views[a]).amax(1)  # b against a's views
        out[start:start + len(a)] = torch.maximum(ab, ba).numpy()
    return out


def _edges(thumbs: torch.Tensor) -> torch.Tensor:
    """Grey-level finite differences ``(P, 2*T*(T-1))`` (down and across) of thumbnails ``(P, 3, T, T)``,
    centred; under 2 grey levels of edge per cell counts as flat (the floor of ``_standardise``)."""
    grey = thumbs.mean(1)  # (P, T, T)
    d = torch.cat([(grey[:, 1:] - grey[:, :-1]).flatten(1), (grey[:, :, 1:] - grey[:, :, :-1]).flatten(1)], 1)
    d = d - d.mean(1, keepdim=True)
    return d / d.norm(dim=1, keepdim=True).clamp_min(2.0 * d.shape[1] ** 0.5)


def structure_similarity(images: np.ndarray, pairs: np.ndarray, batch: int = 256, progress: bool = False
                         ) -> tuple[np.ndarray, np.ndarray]:
    """(colour NCC ``(P,)``, edge correlation ``(P,)``) of each pair at the FINE alignment: the best-aligned
    view of either image against the whole other one, then the correlation of the two thumbnails' edges."""
    ncc, edge = np.zeros(len(pairs), np.float32), np.zeros(len(pairs), np.float32)
    for start, rows, a, b in _pair_batches(pairs, batch, "edge check", progress):
        views = aligned_views(images[rows], FINE)  # (r, V, 3, T, T)
        std = _standardise(views.flatten(2))  # (r, V, 3*T*T)
        best_ab, view_ab = torch.einsum("pd,pvd->pv", std[a, 0], std[b]).max(1)  # (p,) each
        best_ba, view_ba = torch.einsum("pd,pvd->pv", std[b, 0], std[a]).max(1)
        forward = (best_ab >= best_ba)[:, None, None, None]  # which way round aligned better
        whole = torch.where(forward, views[a, 0], views[b, 0])  # (p, 3, T, T)
        aligned = torch.where(forward, views[b, view_ab], views[a, view_ba])  # (p, 3, T, T)
        ncc[start:start + len(a)] = torch.maximum(best_ab, best_ba).numpy()
        edge[start:start + len(a)] = (_edges(whole) * _edges(aligned)).sum(1).numpy()
    return ncc, edge


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


def anchored_groups(n: int, exact: np.ndarray, near: np.ndarray, typicality: np.ndarray) -> list[np.ndarray]:
    """Duplicate groups of two or more rows, largest first, in which every image is a confirmed copy of the
    group's kept (most typical) image, never a copy of a copy.

    Connected components of the confirmed pairs would chain distinct photographs through near-copies of near-
    copies (on CIFAR-10 one such component held 75 images). So exact copies (identical pixels: a transitive
    relation, ``exact`` ``(E, 2)``) are merged first, then the most typical image not yet in a group anchors
    one and takes in the not-yet-grouped images it has a confirmed pair with (``near`` ``(P, 2)``), and so on
    down the typicality order."""
    sets = np.arange(n)  # each row's exact-copy set, named by one of its rows
    for rows in connected_groups(n, exact):
        sets[rows] = rows[0]
    members: dict[int, list[int]] = {}
    for row in np.unique(np.concatenate([exact.reshape(-1), near.reshape(-1)])).tolist():
        members.setdefault(int(sets[row]), []).append(row)
    linked: dict[int, set[int]] = {s: set() for s in members}
    for a, b in near.tolist():
        if sets[a] != sets[b]:
            linked[int(sets[a])].add(int(sets[b]))
            linked[int(sets[b])].add(int(sets[a]))
    best = {s: max(typicality[rows]) for s, rows in members.items()}
    grouped: set[int] = set()
    groups = []
    for anchor in sorted(members, key=lambda s: (-best[s], s)):
        if anchor in grouped:
            continue
        taken = [anchor] + sorted(t for t in linked[anchor] if t not in grouped)
        grouped.update(taken)
        rows = np.array(sorted(r for t in taken for r in members[t]))
        if len(rows) >= 2:
            groups.append(rows)
    return sorted(groups, key=lambda g: (-len(g), g[0]))


def confirmed_pairs(images: np.ndarray, candidates: np.ndarray, pixel_threshold: float = PIXEL_THRESHOLD,
                    edge_threshold: float = EDGE_THRESHOLD, progress: bool = False,
                    unusual: np.ndarray | None = None) -> np.ndarray:
    """The candidate pairs ``(P, 2)`` that both pixel passes confirm as copies, ``(Q, 2)``; a pair with an
    image in ``unusual`` (rows the outlier score flags) is not even checked."""
    if unusual is not None and len(candidates):
        candidates = candidates[~np.isin(candidates, unusual).any(1)]
    pix = pixel_similarity(images, candidates, progress=progress)
    near = candidates[pix >= pixel_threshold]
    ncc, edge = structure_similarity(images, near, progress=progress)
    return near[(ncc >= pixel_threshold) & (edge >= edge_threshold)]


def find_duplicates(embeddings: np.ndarray, images: np.ndarray, sims: np.ndarray, idx: np.ndarray,
                    typicality: np.ndarray, threshold: float = DUP_THRESHOLD,
                    pixel_threshold: float = PIXEL_THRESHOLD, progress: bool = False,
                    edge_threshold: float = EDGE_THRESHOLD, unusual: np.ndarray | None = None) -> Groups:
    """Groups of exact and confirmed near-duplicates; in each, the most typical image is kept.

    ``embeddings`` ``(N, D)`` unit rows, ``images`` ``(N, 3, S, S)`` uint8, the graph ``sims``/``idx``
    ``(N, k)``, ``typicality`` ``(N,)``; ``unusual``: rows never called a near-copy (:func:`confirmed_pairs`)."""
    near = confirmed_pairs(images, candidate_pairs(sims, idx, threshold), pixel_threshold, edge_threshold,
                           progress, unusual)
    group, members, keep, similarity = [], [], [], []
    for g, rows in enumerate(anchored_groups(len(images), exact_pairs(images), near, typicality)):
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
